// RMSprop (Hinton, Lecture 6e), with Graves' centered variant and momentum,
// as torch.optim.RMSprop computes it:
//   v = alpha v + (1 - alpha) g^2;  c = lerp(c, g, 1 - alpha) (centered)
//   a = sqrt(max(v - c^2, 0)) or sqrt(v), plus eps
//   b = momentum b + g / a, p -= lr b   (momentum)   or   p -= lr g / a
// The seed document's form (fusedopt.classic, SeedForm = true) puts eps
// inside the root, a = sqrt(v + eps), and keeps a velocity:
//   b = momentum b - lr g / a, p += b.
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

struct RmspropHyper {
  double lr, alpha, eps, weight_decay, momentum;
};

// Slots: s[0] param, s[1] square_avg, then momentum_buffer (if Momentum), then
// grad_avg (if Centered).
template <typename M, bool Maximize, bool L2Decay, bool Centered, bool Momentum, bool SeedForm = false>
struct RmspropUpdate {
  static constexpr int kBufferSlot = 2;
  static constexpr int kGradAvgSlot = Momentum ? 3 : 2;
  static constexpr int kStates = 2 + int(Momentum) + int(Centered);
  using Hyper = RmspropHyper;

  M neg_lr, alpha, one_minus_alpha, eps, weight_decay, momentum;

  RmspropUpdate() = default;  // CUDA launches carry functors in a by-value array
  FUSEDOPT_HD explicit RmspropUpdate(const RmspropHyper& h)
      : neg_lr(static_cast<M>(-h.lr)),
        alpha(static_cast<M>(h.alpha)),
        one_minus_alpha(static_cast<M>(1.0 - h.alpha)),
        eps(static_cast<M>(h.eps)),
        weight_decay(static_cast<M>(h.weight_decay)),
        momentum(static_cast<M>(h.momentum)) {}
  static FUSEDOPT_HD RmspropUpdate at_step(const RmspropHyper& h, double) { return RmspropUpdate(h); }

  template <typename V>
  FUSEDOPT_HD void operator()(V grad, V* s) const {
    V& param = s[0];
    V& square_avg = s[1];
    grad = effective_grad<Maximize, L2Decay>(grad, param, weight_decay);
    square_avg = square_avg * alpha + one_minus_alpha * grad * grad;
    V avg;
    if constexpr (Centered) {
      V& grad_avg = s[kGradAvgSlot];
      grad_avg = lerp(grad_avg, grad, one_minus_alpha);
      // v - c^2 with c^2 unrounded, as torch's addcmul computes it on the
      // CPU: a c whose square overflows (|g| ~ 1e20 in float32) then leaves
      // v - c^2 = inf - finite = inf, where a rounded c^2 would give inf - inf
      // = NaN. The variance is >= 0 in exact arithmetic; rounded, it can dip
      // below zero where it is nil (alpha = 0, constant gradients) and sqrt
      // would give NaN. A NaN from the data itself still comes through.
      avg = sqrt_(maximum(fma_(-grad_avg, grad_avg, square_avg), V(0)));
    } else if constexpr (SeedForm) {
      avg = sqrt_(square_avg + eps);
    } else {
      avg = sqrt_(square_avg);
    }
    if constexpr (!SeedForm) avg = avg + eps;
    if constexpr (Momentum && SeedForm) {
      V& velocity = s[kBufferSlot];
      velocity = momentum * velocity + neg_lr * (grad / avg);
      param = param + velocity;
    } else if constexpr (Momentum) {
      V& buf = s[kBufferSlot];
      buf = buf * momentum + grad / avg;
      param = param + neg_lr * buf;
    } else {
      param = param + neg_lr * (grad / avg);
    }
  }
};

}  // namespace math
}  // namespace fusedopt
