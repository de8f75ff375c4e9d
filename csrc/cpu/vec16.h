// Sixteen float32 lanes on which the update functors run as they run on one
// float (their operator() is a template on the value type, common.h): each
// operation below is the IEEE operation the scalar code does, lane by lane
// and in the same order, so the results are the scalar loop's bit for bit
// (the build has no FMA contraction: -ffp-contract=off).
//
// Why by hand, where everything else is left to GCC's vectorizer: bfloat16
// stores (kernels_impl.h, vec16_io.h). Rounding to nearest even with integer
// operations (add, shift, a NaN compare and blend) was most of the
// instructions of a vectorized bfloat16 SGD or Adagrad step, and Zen 4 runs
// each 512-bit operation as two halves, so those steps were bound by compute,
// not memory. AVX512_BF16's VCVTNE2PS2BF16 rounds 32 lanes in one
// instruction, which the vectorizer cannot emit; and stochastic rounding's
// hash serves two bfloat16 elements, which it cannot arrange either.
//
// Included by kernels_avx512.cpp before its target pragma, on purpose: the
// functors come from the shared headers, compiled for the baseline ISA, and
// GCC will not inline an AVX-512 function into them. GCC's generic vector
// operations and the x86 builtins carry no target, so these take the ISA of
// the AVX-512 loop they end up inlined into.

#include <immintrin.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // never passed by value out of line: all inlined

#ifndef FUSEDOPT_ISA
#error "vec16.h is included by kernels_avx512.cpp with FUSEDOPT_ISA set"
#endif

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

#define FUSEDOPT_LANES inline __attribute__((always_inline))

struct Vec16 {
  __m512 v;
  Vec16() = default;
  Vec16(__m512 x) : v(x) {}
  // x - 0 is x for every x (-0 too), and GCC makes it one broadcast.
  explicit Vec16(float x) : v(x - __m512{}) {}
};

// a op b, with a float on either side standing for 16 copies of it.
#define FUSEDOPT_VEC16_OPERATOR(op)                                                   \
  FUSEDOPT_LANES Vec16 operator op(Vec16 a, Vec16 b) { return a.v op b.v; }         \
  FUSEDOPT_LANES Vec16 operator op(Vec16 a, float b) { return a.v op b; }          \
  FUSEDOPT_LANES Vec16 operator op(float a, Vec16 b) { return a op b.v; }
FUSEDOPT_VEC16_OPERATOR(+)
FUSEDOPT_VEC16_OPERATOR(-)
FUSEDOPT_VEC16_OPERATOR(*)
FUSEDOPT_VEC16_OPERATOR(/)
#undef FUSEDOPT_VEC16_OPERATOR

FUSEDOPT_LANES Vec16 operator-(Vec16 a) { return -a.v; }

// The math:: functions of common.h for Vec16, found by argument-dependent
// lookup from the functors' templates.
FUSEDOPT_LANES Vec16 sqrt_(Vec16 x) {
  return __builtin_ia32_sqrtps512_mask(x.v, x.v, static_cast<__mmask16>(-1), _MM_FROUND_CUR_DIRECTION);
}
FUSEDOPT_LANES Vec16 fma_(Vec16 a, Vec16 b, Vec16 c) {
  return __builtin_ia32_vfmaddps512_mask(a.v, b.v, c.v, static_cast<__mmask16>(-1), _MM_FROUND_CUR_DIRECTION);
}
FUSEDOPT_LANES Vec16 fma_(float a, Vec16 b, Vec16 c) { return fma_(Vec16(a), b, c); }

// torch.maximum: a NaN in a wins, then the greater (b where equal).
FUSEDOPT_LANES Vec16 maximum(Vec16 a, Vec16 b) { return ((a.v != a.v) | (a.v > b.v)) ? a.v : b.v; }

FUSEDOPT_LANES Vec16 lerp(Vec16 self, Vec16 end, float weight) {
  const Vec16 diff = end - self;
  return weight < 0.5f ? self + weight * diff : end - diff * (1.0f - weight);
}

#undef FUSEDOPT_LANES

}  // namespace
}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt

#pragma GCC diagnostic pop
