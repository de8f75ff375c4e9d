// Loads and stores of Vec lanes (lanes.h: 8 here) for the AVX2 kernels'
// bfloat16 loops in kernels_impl.h; included there inside its ISA namespace,
// after Bf16RandomRun and the 8-lane roundings of narrow(). lanes_avx512.h has
// the same functions for AVX-512.
//
// No lane needs the scalar code here: the integer rounding of bf16_nearest8
// is math::bf16_nearest's, NaN and subnormal lanes included.

FUSEDOPT_ALWAYS_INLINE Vec widen8(__m128i bfloat16_bits) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bfloat16_bits), 16));
}
FUSEDOPT_ALWAYS_INLINE Vec load_lanes(const BFloat16* p) {
  return widen8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Two Vec (lo: i .. i + 7, hi: i + 8 .. i + 15) rounded into one 32-byte store.
FUSEDOPT_ALWAYS_INLINE void store_pair(BFloat16* p, Vec lo, Vec hi) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_pack16(bf16_nearest8(lo.v), bf16_nearest8(hi.v)));
}

// math::bf16_stochastic on 16 lanes from element i (even): the 8 words of
// counters (first + i) / 2 ... hold the 16 elements' random halves in order.
FUSEDOPT_ALWAYS_INLINE void store_pair_stochastic(BFloat16* p, Vec lo, Vec hi, const Bf16RandomRun& run,
                                                  uint32_t i) {
  const __m256i random = (__m256i)run.words(i / 2 + kLaneIndex);
  const __m256i random_lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(random));
  const __m256i random_hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(random, 1));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      bf16_pack16(bf16_stochastic8(lo.v, random_lo), bf16_stochastic8(hi.v, random_hi)));
}

// math::split_compensated<false> on 16 lanes: the param rounded to nearest
// and what that dropped (0 where that is NaN: x infinite or NaN), rounded to
// nearest as the residual.
FUSEDOPT_ALWAYS_INLINE __m256i residual8(__m256 x, __m256i kept) {
  const __m256 dropped = _mm256_sub_ps(x, _mm256_castsi256_ps(_mm256_slli_epi32(kept, 16)));
  return bf16_nearest8(_mm256_and_ps(dropped, _mm256_cmp_ps(dropped, dropped, _CMP_ORD_Q)));
}

FUSEDOPT_ALWAYS_INLINE void store_pair_compensated(BFloat16* param, BFloat16* residual, Vec lo, Vec hi) {
  const __m256i kept_lo = bf16_nearest8(lo.v), kept_hi = bf16_nearest8(hi.v);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(param), bf16_pack16(kept_lo, kept_hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(residual),
                      bf16_pack16(residual8(lo.v, kept_lo), residual8(hi.v, kept_hi)));
}
