// Loads and stores of Vec lanes (lanes.h: 16 here) for the AVX-512 kernels'
// bfloat16 loops in kernels_impl.h; included there inside its ISA namespace,
// after Bf16RandomRun. lanes_avx2.h has the same functions for AVX2.

FUSEDOPT_ALWAYS_INLINE Vec widen16(__m256i bfloat16_bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bfloat16_bits), 16));
}
FUSEDOPT_ALWAYS_INLINE Vec load_lanes(const BFloat16* p) {
  return widen16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Lanes that bf16_nearest32 rounds otherwise than math::bf16_nearest:
// VCVTNE2PS2BF16 takes subnormal inputs for zero, and NaNs keep their
// payload (with the integer rounding too) where bf16_nearest gives c10's
// quiet NaN. Rare, so such vectors go lane by lane.
constexpr int kNanOrSubnormal = 0x01 | 0x20 | 0x80;  // VFPCLASSPS: QNaN, denormal, SNaN

FUSEDOPT_ALWAYS_INLINE bool any_lane(Vec lo, Vec hi, int classes) {
  return __builtin_expect((_mm512_fpclass_ps_mask(lo.v, classes) | _mm512_fpclass_ps_mask(hi.v, classes)) != 0, 0);
}

__attribute__((noinline, cold)) void store_pair_lanes(BFloat16* p, Vec lo, Vec hi) {
  alignas(64) float lanes[kPair];
  store_pair(lanes, lo, hi);
  for (int i = 0; i < kPair; ++i) p[i] = from_math<BFloat16>(lanes[i]);
}

// The high halves of 32-bit lanes, lo's then hi's: 32 bfloat16 values.
FUSEDOPT_ALWAYS_INLINE __m512i high_halves(__m512i lo, __m512i hi) {
  alignas(64) static constexpr uint16_t kHighHalves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21,
                                                           23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 43,
                                                           45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
  return _mm512_permutex2var_epi16(lo, _mm512_load_si512(kHighHalves), hi);
}

// 32 lanes rounded to bfloat16, to nearest even (right for all but the lanes
// of kNanOrSubnormal): one instruction with AVX512_BF16, else the integer
// rounding of math::bf16_nearest.
FUSEDOPT_ALWAYS_INLINE __m512i bf16_nearest32(Vec lo, Vec hi) {
#if defined(FUSEDOPT_AVX512_BF16)
  return (__m512i)_mm512_cvtne2ps_pbh(hi.v, lo.v);
#else
  return high_halves((__m512i)math::bf16_nearest_carry((LaneBits)_mm512_castps_si512(lo.v)),
                     (__m512i)math::bf16_nearest_carry((LaneBits)_mm512_castps_si512(hi.v)));
#endif
}

// Two Vec (lo: i .. i + 15, hi: i + 16 .. i + 31) rounded into one 64-byte store.
FUSEDOPT_ALWAYS_INLINE void store_pair(BFloat16* p, Vec lo, Vec hi) {
  if (any_lane(lo, hi, kNanOrSubnormal)) return store_pair_lanes(p, lo, hi);
  _mm512_storeu_si512(p, bf16_nearest32(lo, hi));
}

// math::bf16_stochastic on 32 lanes from element i (even): the 16 words of
// counters (first + i) / 2 ... hold the 32 elements' random halves in order,
// which are added below the kept bits; then the high halves of both vectors
// are picked into one.
FUSEDOPT_ALWAYS_INLINE void store_pair_stochastic(BFloat16* p, Vec lo, Vec hi, const Bf16RandomRun& run,
                                                  uint32_t i) {
  const __m512i random = (__m512i)run.words(i / 2 + kLaneIndex);
  const __m512i a = _mm512_add_epi32(_mm512_castps_si512(lo.v), _mm512_cvtepu16_epi32(_mm512_castsi512_si256(random)));
  const __m512i b = _mm512_add_epi32(_mm512_castps_si512(hi.v), _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(random, 1)));
  const __mmask32 nan = _mm512_kunpackw(_mm512_cmp_ps_mask(hi.v, hi.v, _CMP_UNORD_Q),
                                        _mm512_cmp_ps_mask(lo.v, lo.v, _CMP_UNORD_Q));
  _mm512_storeu_si512(p, _mm512_mask_mov_epi16(high_halves(a, b), nan, _mm512_set1_epi16(0x7FC0)));
}

// math::split_compensated<false> on 32 lanes: the param rounded to nearest
// and what that dropped, rounded to nearest as the residual. Infinite and
// NaN values (whose residual is 0) and subnormal ones go lane by lane.
FUSEDOPT_ALWAYS_INLINE void store_pair_compensated(BFloat16* param, BFloat16* residual, Vec lo, Vec hi) {
  constexpr int kSpecial = kNanOrSubnormal | 0x08 | 0x10;  // and +-Inf
  const __m512i kept = bf16_nearest32(lo, hi);
  const Vec dropped_lo = lo - widen16(_mm512_castsi512_si256(kept));
  const Vec dropped_hi = hi - widen16(_mm512_extracti64x4_epi64(kept, 1));
  if (any_lane(lo, hi, kSpecial) || any_lane(dropped_lo, dropped_hi, 0x20)) {
    return store_pair_compensated_lanes(param, residual, lo, hi);
  }
  _mm512_storeu_si512(param, kept);
  _mm512_storeu_si512(residual, bf16_nearest32(dropped_lo, dropped_hi));
}
