// Shared by the CPU kernels and the CUDA kernels: no torch headers, no
// branches on data, so the CPU loops vectorize.
//
// The update functors (adam.h, sgd.h, ...) hold their scalars in the math
// type M; their operator() takes values of type V, which is M, or on the
// CPU lanes of it (cpu/lanes.h) that run the same operations.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDOPT_HD __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HD inline __attribute__((always_inline))
#endif

namespace fusedopt {
namespace math {

// How weight decay enters an update: added to the gradient (L2, torch.optim's
// `weight_decay`), or applied to the parameter directly (AdamW).
enum class Decay : int { kNone = 0, kL2 = 1, kDecoupled = 2 };

template <typename M>
FUSEDOPT_HD M sqrt_(M x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// a * b + c rounded once. The kernels are built without FMA contraction
// (so every ISA and CUDA give the baseline's bits); this is for the few
// places where torch.optim's CPU kernels fuse and the fused form decides the
// result, not just its last bit (see rmsprop.h). Without an FMA unit (the
// baseline ISA) it is libm's exact software fma: slower, the same bits.
template <typename M>
FUSEDOPT_HD M fma_(M a, M b, M c) {
#if defined(__CUDA_ARCH__)
  return ::fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

template <typename M>
FUSEDOPT_HD M fabs_(M x) {
#if defined(__CUDA_ARCH__)
  return ::fabs(x);
#else
  return std::fabs(x);
#endif
}

template <typename M>
FUSEDOPT_HD M floor_(M x) {
#if defined(__CUDA_ARCH__)
  return ::floor(x);
#else
  return std::floor(x);
#endif
}

template <typename M>
FUSEDOPT_HD M pow_(M x, M y) {
#if defined(__CUDA_ARCH__)
  return ::pow(x, y);
#else
  return std::pow(x, y);
#endif
}

// ATen's lerp: two formulas so the result is exact at both ends.
template <typename M>
FUSEDOPT_HD M lerp(M self, M end, M weight) {
  const M diff = end - self;
  const M from_self = self + weight * diff;
  const M from_end = end - diff * (M(1) - weight);
  return (weight < M(0.5)) ? from_self : from_end;
}

// torch.maximum: a NaN on either side wins.
template <typename M>
FUSEDOPT_HD M maximum(M a, M b) {
  return (a != a) ? a : ((a > b) ? a : b);
}

// The gradient as every rule sees it: sign-flipped for `maximize`, plus the
// coupled (L2) weight decay term, in the order torch.optim applies them.
template <bool Maximize, bool L2Decay, typename V, typename M>
FUSEDOPT_HD V effective_grad(V grad, V param, M weight_decay) {
  if constexpr (Maximize) grad = -grad;
  // torch's grad.add(param, alpha=weight_decay) rounds once (a fused
  // multiply-add on the CPU); rounding the product first differs where the
  // sum nearly cancels, by 1e-4 relative after one step near eps.
  if constexpr (L2Decay) grad = fma_(weight_decay, param, grad);
  return grad;
}

// The gradient of the seed document's layer API: the loss gradient plus the
// weighted regularization gradient, g = dw + lambdaa * dr.
template <typename V, typename M>
FUSEDOPT_HD V regularized_grad(V dw, V dr, M lambdaa) {
  return dw + lambdaa * dr;
}

}  // namespace math
}  // namespace fusedopt
