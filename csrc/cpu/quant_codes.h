// The blockwise 8-bit codes of quantize.h, a block at a time, for the CPU
// kernels: included by kernels_impl.h inside its ISA namespace, so each loop
// is compiled for that ISA. AVX-512 takes 16 lanes and mask registers, AVX2 8
// lanes, and the scalar loop (quantize.h itself) the rest; all three give the
// same codes and values (tests/test_quantized.py, every ISA).

#ifndef FUSEDOPT_ISA
#error "quant_codes.h is included by kernels_impl.h"
#endif

constexpr math::SignedCode kSignedCode{};
constexpr math::UnsignedCode kUnsignedCode{};

#if defined(FUSEDOPT_AVX512)
// An 8-entry decade table in the low half of a register, for permutexvar
// with indices 0..7.
FUSEDOPT_ALWAYS_INLINE __m512 table16(const float* table8) {
  return _mm512_castps256_ps512(_mm256_loadu_ps(table8));
}

// The decade of y (how many of low[1..D) it reaches) from its binary
// exponent e: [2^e, 2^(e+1)) holds at most one decade boundary, so y's decade
// is that of 2^e or one more, which one compare with the next decade's low
// end decides (instead of D - 1 compares). Rows run from 2^-27, below the
// lowest low end (10^-8: smaller y are coded below the decades whatever their
// row says), to 2^4 = 16, where y is clamped (it never exceeds vmax < 16 but
// as an inf).
template <class Code>
struct ExponentDecades {
  static constexpr int kFirstBiasedExponent = 127 - 27;
  int32_t decade[32];  // the decade of 2^(row - 27)
  float next_low[16];  // low[d + 1]; NaN past the top decade, where no compare may add one
  constexpr explicit ExponentDecades(const Code& c) : decade(), next_low() {
    float power = 1.0f;
    for (int e = 0; e > -27; --e) power *= 0.5f;
    for (int row = 0; row < 32; ++row, power *= 2.0f) {
      for (int d = 1; d < Code::kDecades; ++d) decade[row] += power >= c.low[d] ? 1 : 0;
    }
    for (int d = 0; d < 16; ++d) next_low[d] = d + 1 < Code::kDecades ? c.low[d + 1] : __builtin_nanf("");
  }
};
#endif

// m codes of one block to values (scale = absmax / vmax): quantize.h's
// decode_signed / decode_unsigned. The decade of k >= 1 is the exponent of
// float(k); its tables fit one register.
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE void decode_codes(const uint8_t* codes, float scale, float* dst, int m) {
  using Code = std::conditional_t<Signed, math::SignedCode, math::UnsignedCode>;
  constexpr Code c{};
  int i = 0;
#if defined(FUSEDOPT_AVX512)
  {
    const __m512 first = table16(c.first), width = table16(c.width), s = _mm512_set1_ps(scale);
    const __m512i one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512(), bias = _mm512_set1_epi32(127);
    for (; i + 16 <= m; i += 16) {
      const __m512i code = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
      const __m512i k = Signed ? _mm512_and_si512(code, _mm512_set1_epi32(0x7F)) : code;
      const __m512i exponent = _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(k)), 23);
      const __m512i decade = _mm512_max_epi32(_mm512_sub_epi32(exponent, bias), zero);
      const __m512 step = _mm512_cvtepi32_ps(_mm512_sub_epi32(k, _mm512_sllv_epi32(one, decade)));
      __m512 value = _mm512_add_ps(_mm512_permutexvar_ps(decade, first),
                                   _mm512_mul_ps(_mm512_permutexvar_ps(decade, width), step));
      value = _mm512_mul_ps(_mm512_maskz_mov_ps(_mm512_test_epi32_mask(k, k), value), s);
      if constexpr (Signed) {
        const __mmask16 negative = _mm512_test_epi32_mask(code, _mm512_set1_epi32(0x80));
        value = _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(value), negative,
                                                          _mm512_castps_si512(value), _mm512_set1_epi32(INT32_MIN)));
      }
      _mm512_storeu_ps(dst + i, value);
    }
  }
#endif
#if defined(FUSEDOPT_AVX2_F16C)
  const __m256 first = _mm256_loadu_ps(c.first), width = _mm256_loadu_ps(c.width), s = _mm256_set1_ps(scale);
  const __m256i one = _mm256_set1_epi32(1), zero = _mm256_setzero_si256(), bias = _mm256_set1_epi32(127);
  for (; i + 8 <= m; i += 8) {
    const __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
    const __m256i k = Signed ? _mm256_and_si256(code, _mm256_set1_epi32(0x7F)) : code;
    const __m256i exponent = _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(k)), 23);
    const __m256i decade = _mm256_max_epi32(_mm256_sub_epi32(exponent, bias), zero);
    const __m256i base = _mm256_sllv_epi32(one, decade);
    const __m256 step = _mm256_cvtepi32_ps(_mm256_sub_epi32(k, base));
    __m256 value = _mm256_add_ps(_mm256_permutevar8x32_ps(first, decade),
                                 _mm256_mul_ps(_mm256_permutevar8x32_ps(width, decade), step));
    value = _mm256_and_ps(value, _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, zero)));
    value = _mm256_mul_ps(value, s);
    if constexpr (Signed) {
      value = _mm256_xor_ps(value, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(code, 7), 31)));
    }
    _mm256_storeu_ps(dst + i, value);
  }
#endif
  for (; i < m; ++i) {
    dst[i] = Signed ? math::decode_signed(kSignedCode, codes[i], scale)
                    : math::decode_unsigned(kUnsignedCode, codes[i], scale);
  }
}

// m values of one block to codes (inv = vmax / absmax): quantize.h's
// encode_signed / encode_unsigned.
template <bool Signed>
FUSEDOPT_ALWAYS_INLINE void encode_codes(const float* src, float inv, uint8_t* codes, int m) {
  using Code = std::conditional_t<Signed, math::SignedCode, math::UnsignedCode>;
  constexpr Code c{};
  int i = 0;
#if defined(FUSEDOPT_AVX512)
  {
    using Decades = ExponentDecades<Code>;
    constexpr Decades e{c};
    const __m512i decades_low = _mm512_loadu_si512(e.decade), decades_high = _mm512_loadu_si512(e.decade + 16);
    const __m512 next_low = _mm512_loadu_ps(e.next_low), slope = table16(c.slope), offset = table16(c.offset);
    const __m512 v = _mm512_set1_ps(inv), zero = _mm512_setzero_ps(), low0 = _mm512_set1_ps(c.low[0]);
    const __m512 sixteen = _mm512_set1_ps(16.0f);
    const __m512i one = _mm512_set1_epi32(1), first_row = _mm512_set1_epi32(Decades::kFirstBiasedExponent);
    for (; i + 16 <= m; i += 16) {
      const __m512 x = _mm512_loadu_ps(src + i);
      // An inf y (vmax / absmax overflowed) is coded as 16 is; a NaN stays NaN
      // (min returns its second operand then).
      const __m512 y = _mm512_min_ps(sixteen, _mm512_mul_ps(Signed ? _mm512_abs_ps(x) : x, v));
      // Biased exponents below the first row saturate to row 0; NaN's row is
      // any, its code is decided below.
      const __m512i row = _mm512_subs_epu16(_mm512_srli_epi32(_mm512_castps_si512(y), 23), first_row);
      __m512i decade = _mm512_permutex2var_epi32(decades_low, row, decades_high);
      const __mmask16 up = _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(decade, next_low), _CMP_GE_OQ);
      decade = _mm512_mask_add_epi32(decade, up, decade, one);
      const __m512i base = _mm512_sllv_epi32(one, decade);
      // floor(y * slope - offset) as an integer: a NaN becomes INT32_MIN, then 0.
      __m512i j = _mm512_cvt_roundps_epi32(_mm512_sub_ps(_mm512_mul_ps(y, _mm512_permutexvar_ps(decade, slope)),
                                                         _mm512_permutexvar_ps(decade, offset)),
                                           _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
      j = _mm512_min_epi32(_mm512_max_epi32(j, _mm512_setzero_si512()), _mm512_sub_epi32(base, one));
      __m512i code = _mm512_add_epi32(base, j);
      const __mmask16 reached = _mm512_cmp_ps_mask(y, low0, _CMP_GE_OQ);
      if constexpr (Signed) {
        code = _mm512_maskz_mov_epi32(reached, code);
        code = _mm512_mask_or_epi32(code, _mm512_cmp_ps_mask(x, zero, _CMP_LT_OQ), code, _mm512_set1_epi32(0x80));
      } else {
        const __m512i below = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(y, zero, _CMP_GT_OQ), one);
        code = _mm512_mask_mov_epi32(below, reached, code);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtepi32_epi8(code));
    }
  }
#endif
#if defined(FUSEDOPT_AVX2_F16C)
  const __m256 slope = _mm256_loadu_ps(c.slope), offset = _mm256_loadu_ps(c.offset), v = _mm256_set1_ps(inv);
  const __m256 fzero = _mm256_setzero_ps(), low0 = _mm256_set1_ps(c.low[0]);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256 magnitude_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (; i + 8 <= m; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m256 y = _mm256_mul_ps(Signed ? _mm256_and_ps(x, magnitude_mask) : x, v);
    __m256i decade = _mm256_setzero_si256();
    for (int d = 1; d < Code::kDecades; ++d) {  // each reached low end adds 1 (a true compare is -1)
      decade = _mm256_sub_epi32(decade, _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_set1_ps(c.low[d]), _CMP_GE_OQ)));
    }
    const __m256i base = _mm256_sllv_epi32(one, decade);
    __m256 j = _mm256_floor_ps(_mm256_sub_ps(_mm256_mul_ps(y, _mm256_permutevar8x32_ps(slope, decade)),
                                             _mm256_permutevar8x32_ps(offset, decade)));
    j = _mm256_max_ps(j, fzero);  // a NaN j becomes 0, as in encode_magnitude
    j = _mm256_min_ps(j, _mm256_cvtepi32_ps(_mm256_sub_epi32(base, one)));
    const __m256i k = _mm256_add_epi32(base, _mm256_cvttps_epi32(j));
    __m256i below = _mm256_setzero_si256();
    if constexpr (!Signed) below = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(y, fzero, _CMP_GT_OQ)), one);
    __m256i code = _mm256_blendv_epi8(below, k, _mm256_castps_si256(_mm256_cmp_ps(y, low0, _CMP_GE_OQ)));
    if constexpr (Signed) {
      const __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(x, fzero, _CMP_LT_OQ));
      code = _mm256_or_si256(code, _mm256_and_si256(negative, _mm256_set1_epi32(0x80)));
    }
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + i), _mm_packus_epi16(words, words));
  }
#endif
  for (; i < m; ++i) {
    codes[i] = Signed ? math::encode_signed(kSignedCode, src[i], inv) : math::encode_unsigned(kUnsignedCode, src[i], inv);
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

