// Float32 lanes on which the update functors run as they run on one float
// (their operator() is a template on the value type, common.h): `Vec` is 16
// lanes in the AVX-512 kernels (FUSEDOPT_LANES_AVX512) and 8 in the AVX2
// ones (FUSEDOPT_LANES_AVX2). Each operation below is the IEEE operation the
// scalar code does, lane by lane and in the same order, so the results are
// the scalar loop's bit for bit (the build has no FMA contraction:
// -ffp-contract=off).
//
// Why by hand, where everything else is left to GCC's vectorizer: bfloat16
// stores (kernels_impl.h, lanes_avx512.h, lanes_avx2.h). Rounding to nearest
// even with integer operations (add, shift, a NaN compare and blend) was
// most of the instructions of a vectorized bfloat16 SGD or Adagrad step, and
// Zen 4 runs each 512-bit operation as two halves, so those steps were bound
// by compute, not memory. AVX512_BF16's VCVTNE2PS2BF16 rounds 32 lanes in
// one instruction, which the vectorizer cannot emit; GCC's own bfloat16
// loops on AVX2 ran out of its 16 vector registers (kernels_impl.h); and
// stochastic rounding's hash serves two bfloat16 elements, which it cannot
// arrange either.
//
// Included by kernels_avx512.cpp and kernels_avx2.cpp before their target
// pragma, on purpose: the functors come from the shared headers, compiled
// for the baseline ISA, and GCC will not inline a target-AVX-512 (or AVX2)
// function into them. GCC's generic vector operations and the x86 builtins
// carry no target, so these take the ISA of the loop they end up inlined
// into.

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#ifndef FUSEDOPT_ISA
#error "lanes.h is included by kernels_<isa>.cpp with FUSEDOPT_ISA set"
#endif

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

#define FUSEDOPT_LANES inline __attribute__((always_inline))

#if defined(FUSEDOPT_LANES_AVX512)
using LaneRegister = __m512;
using LaneMask = __mmask16;
#elif defined(FUSEDOPT_LANES_AVX2)
using LaneRegister = __m256;
#else
#error "lanes.h needs FUSEDOPT_LANES_AVX512 or FUSEDOPT_LANES_AVX2"
#endif

struct Vec {
  LaneRegister v;
  Vec() = default;
  Vec(LaneRegister x) : v(x) {}
  // x - 0 is x for every x (-0 too), and GCC makes it one broadcast.
  explicit Vec(float x) : v(x - LaneRegister{}) {}
};
constexpr int kLanes = sizeof(LaneRegister) / sizeof(float);

// uint32 lanes, for the random bits (math::mix32 on them wraps as on one).
using LaneBits = uint32_t __attribute__((vector_size(sizeof(LaneRegister))));
#if defined(FUSEDOPT_LANES_AVX512)
constexpr LaneBits kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#else
constexpr LaneBits kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7};
#endif

// a op b, with a float on either side standing for a lane-full of it.
#define FUSEDOPT_VEC_OPERATOR(op)                                                   \
  FUSEDOPT_LANES Vec operator op(Vec a, Vec b) { return a.v op b.v; }             \
  FUSEDOPT_LANES Vec operator op(Vec a, float b) { return a.v op b; }            \
  FUSEDOPT_LANES Vec operator op(float a, Vec b) { return a op b.v; }
FUSEDOPT_VEC_OPERATOR(+)
FUSEDOPT_VEC_OPERATOR(-)
FUSEDOPT_VEC_OPERATOR(*)
FUSEDOPT_VEC_OPERATOR(/)
#undef FUSEDOPT_VEC_OPERATOR

FUSEDOPT_LANES Vec operator-(Vec a) { return -a.v; }

// float32 loads and stores: unaligned moves.
FUSEDOPT_LANES Vec load_lanes(const float* p) {
  LaneRegister v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// The loops take two Vec at a time: lo from p, hi after it.
FUSEDOPT_LANES void store_pair(float* p, Vec lo, Vec hi) {
  std::memcpy(p, &lo.v, sizeof(lo.v));
  std::memcpy(p + kLanes, &hi.v, sizeof(hi.v));
}

// The math:: functions of common.h for Vec, found by argument-dependent
// lookup from the functors' templates.
#if defined(FUSEDOPT_LANES_AVX512)
FUSEDOPT_LANES Vec sqrt_(Vec x) {
  return __builtin_ia32_sqrtps512_mask(x.v, x.v, static_cast<LaneMask>(-1), _MM_FROUND_CUR_DIRECTION);
}
FUSEDOPT_LANES Vec fma_(Vec a, Vec b, Vec c) {
  return __builtin_ia32_vfmaddps512_mask(a.v, b.v, c.v, static_cast<LaneMask>(-1), _MM_FROUND_CUR_DIRECTION);
}
#else
FUSEDOPT_LANES Vec sqrt_(Vec x) { return __builtin_ia32_sqrtps256(x.v); }
FUSEDOPT_LANES Vec fma_(Vec a, Vec b, Vec c) { return __builtin_ia32_vfmaddps256(a.v, b.v, c.v); }
#endif
FUSEDOPT_LANES Vec fma_(float a, Vec b, Vec c) { return fma_(Vec(a), b, c); }

// torch.maximum: a NaN in a wins, then the greater (b where equal).
FUSEDOPT_LANES Vec maximum(Vec a, Vec b) { return ((a.v != a.v) | (a.v > b.v)) ? a.v : b.v; }

FUSEDOPT_LANES Vec lerp(Vec self, Vec end, float weight) {
  const Vec diff = end - self;
  return weight < 0.5f ? self + weight * diff : end - diff * (1.0f - weight);
}

#undef FUSEDOPT_LANES

}  // namespace
}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt

