// Loads and stores of Vec lanes (lanes.h: 8 here) for the AVX2 kernels'
// bfloat16 loops in kernels_impl.h; included there inside its ISA namespace,
// after Bf16RandomRun and the 8-lane roundings of narrow(). lanes_avx512.h has
// the same functions for AVX-512.
//
// The integer rounding is math::bf16_nearest's, subnormals and NaN (blended
// in as the quiet NaN) included.

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
// and what that dropped, rounded to nearest as the residual. Where that
// difference is NaN (the param infinite or NaN: a residual of 0), the pair
// goes lane by lane: one test for the pair instead of NaN blends in both
// roundings. (Tried on every bfloat16 store: no faster for plain stores,
// slower for stochastic ones, whose loops then kept constants in memory.)
FUSEDOPT_ALWAYS_INLINE bool any_nan(Vec lo, Vec hi) {
  return __builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(lo.v, hi.v, _CMP_UNORD_Q)) != 0, 0);
}

FUSEDOPT_ALWAYS_INLINE void store_pair_compensated(BFloat16* param, BFloat16* residual, Vec lo, Vec hi) {
  const __m256i kept_lo = bf16_nearest8_not_nan(lo.v), kept_hi = bf16_nearest8_not_nan(hi.v);
  const Vec dropped_lo = lo - _mm256_castsi256_ps(_mm256_slli_epi32(kept_lo, 16));
  const Vec dropped_hi = hi - _mm256_castsi256_ps(_mm256_slli_epi32(kept_hi, 16));
  if (any_nan(dropped_lo, dropped_hi)) return store_pair_compensated_lanes(param, residual, lo, hi);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(param), bf16_pack16(kept_lo, kept_hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(residual),
                      bf16_pack16(bf16_nearest8_not_nan(dropped_lo.v), bf16_nearest8_not_nan(dropped_hi.v)));
}
