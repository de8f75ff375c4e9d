// The blockwise 8-bit codes of quantize.h, a block at a time, for the CPU
// kernels: included by kernels_impl.h inside its ISA namespace, so each loop
// is compiled for that ISA. A code is the top bits of a float16, so the
// conversion instructions (vcvtps2ph rounds to nearest even, vcvtph2ps is
// exact) do most of the work, on 16 codes at a time in 16-bit lanes (AVX-512
// converts them with one instruction, AVX2 with two); the scalar loop
// (quantize.h itself) takes the rest, and all give the same codes and values
// (tests/test_quantized.py, every ISA).

#ifndef FUSEDOPT_ISA
#error "quant_codes.h is included by kernels_impl.h"
#endif

#if defined(FUSEDOPT_AVX2_F16C)
// 16 bytes as 16-bit lanes.
FUSEDOPT_ALWAYS_INLINE __m256i widen_bytes(const uint8_t* bytes) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
}

// The float16 bits of 16 codes (16-bit lanes): quantize.h's decode_signed /
// decode_unsigned before the scale.
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE __m256i float16_of_codes(const uint8_t* codes) {
  const __m256i code = widen_bytes(codes);
  if constexpr (!Signed) return _mm256_slli_epi16(code, 7);
  const __m256i magnitude = _mm256_slli_epi16(_mm256_and_si256(code, _mm256_set1_epi16(0x7F)), 7);
  return _mm256_or_si256(magnitude, _mm256_slli_epi16(_mm256_srli_epi16(code, 7), 15));
}

// The low 7 bits of 16 random bytes, as 16-bit lanes.
FUSEDOPT_ALWAYS_INLINE __m256i random_carries(const uint8_t* random) {
  return _mm256_and_si256(widen_bytes(random), _mm256_set1_epi16(0x7F));
}

// quantize.h's round_float16_magnitude and sign for 16 float16 lanes; random:
// for non-negative codes, random_carries.
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE __m256i float16_codes(__m256i h, __m256i random) {
  const __m256i magnitude = _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF));
  __m256i carry = random;
  if constexpr (Signed) {
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi16(magnitude, 7), _mm256_set1_epi16(1));
    carry = _mm256_add_epi16(_mm256_set1_epi16(0x3F), odd);
  }
  __m256i k = _mm256_srli_epi16(_mm256_add_epi16(magnitude, carry), 7);
  k = _mm256_min_epu16(k, _mm256_set1_epi16(Signed ? 0x7F : 0xF7));
  if constexpr (Signed) k = _mm256_or_si256(k, _mm256_and_si256(_mm256_srli_epi16(h, 8), _mm256_set1_epi16(0x80)));
  return _mm256_andnot_si256(_mm256_cmpgt_epi16(magnitude, _mm256_set1_epi16(0x7C00)), k);  // NaN: 0
}
#endif

// m codes of one block to values (scale: quantize.h's decode_scale).
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE void decode_codes(const uint8_t* codes, float scale, float* dst, int m) {
  int i = 0;
#if defined(FUSEDOPT_AVX512)
  {
    const __m512 s = _mm512_set1_ps(scale);
    for (; i + 16 <= m; i += 16) {
      _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtph_ps(float16_of_codes<Signed>(codes + i)), s));
    }
  }
#endif
#if defined(FUSEDOPT_AVX2_F16C)
  const __m256 s = _mm256_set1_ps(scale);
  for (; i + 16 <= m; i += 16) {
    const __m256i h = float16_of_codes<Signed>(codes + i);
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), s));
    _mm256_storeu_ps(dst + i + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), s));
  }
#endif
  for (; i < m; ++i) {
    dst[i] = Signed ? math::decode_signed(codes[i], scale) : math::decode_unsigned(codes[i], scale);
  }
}

// m values of one block to codes (inv: quantize.h's encode_scale; random:
// for non-negative codes, each value's code_random_byte).
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE void encode_codes(const float* src, float inv, const uint8_t* random, uint8_t* codes, int m) {
  int i = 0;
#if defined(FUSEDOPT_AVX512)
  {
    const __m512 v = _mm512_set1_ps(inv), zero = _mm512_setzero_ps();
    const __m512 smallest = _mm512_set1_ps(math::kSmallestUnsigned);
    for (; i + 16 <= m; i += 16) {
      __m512 y = _mm512_mul_ps(_mm512_loadu_ps(src + i), v);
      __m256i bits = _mm256_setzero_si256();
      if constexpr (!Signed) {
        y = _mm512_mask_max_ps(y, _mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ), y, smallest);
        bits = random_carries(random + i);
      }
      const __m256i h = _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm256_cvtepi16_epi8(float16_codes<Signed>(h, bits)));
    }
  }
#endif
#if defined(FUSEDOPT_AVX2_F16C)
  const __m256 v = _mm256_set1_ps(inv), zero = _mm256_setzero_ps(), smallest = _mm256_set1_ps(math::kSmallestUnsigned);
  const auto to_float16 = [&](const float* at) {
    __m256 y = _mm256_mul_ps(_mm256_loadu_ps(at), v);
    if constexpr (!Signed) {
      y = _mm256_blendv_ps(y, _mm256_max_ps(y, smallest), _mm256_cmp_ps(y, zero, _CMP_GT_OQ));
    }
    return _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  };
  for (; i + 16 <= m; i += 16) {
    const __m256i h = _mm256_set_m128i(to_float16(src + i + 8), to_float16(src + i));
    const __m256i code = float16_codes<Signed>(h, Signed ? _mm256_setzero_si256() : random_carries(random + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i),
                     _mm_packus_epi16(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1)));
  }
#endif
  for (; i < m; ++i) {
    codes[i] = Signed ? math::encode_signed(src[i], inv) : math::encode_unsigned(src[i], inv, random[i]);
  }
}

// The largest |x| of m values, as the largest bit pattern with the sign
// cleared: the same order for non-negative floats, NaN above them all (so a
// NaN wins and the block's codes say so), and an integer max.
FUSEDOPT_ALWAYS_INLINE float block_max(const float* src, int m) {
  uint32_t bits = 0;
  int i = 0;
#if defined(FUSEDOPT_AVX512)
  {
    const __m512i magnitude_mask = _mm512_set1_epi32(0x7FFFFFFF);
    __m512i acc = _mm512_setzero_si512();
    for (; i + 16 <= m; i += 16) {
      acc = _mm512_max_epu32(acc, _mm512_and_si512(_mm512_loadu_si512(src + i), magnitude_mask));
    }
    bits = _mm512_reduce_max_epu32(acc);
  }
#endif
#if defined(FUSEDOPT_AVX2_F16C)
  const __m256i magnitude_mask = _mm256_set1_epi32(0x7FFFFFFF);
  __m256i acc = _mm256_setzero_si256();
  for (; i + 8 <= m; i += 8) {
    acc = _mm256_max_epu32(acc, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)),
                                                 magnitude_mask));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  for (uint32_t lane : lanes) bits = lane > bits ? lane : bits;
#endif
  for (; i < m; ++i) {
    const uint32_t b = math::float_bits(src[i]) & 0x7FFFFFFFu;
    bits = b > bits ? b : bits;
  }
  return math::bits_float(bits);
}

