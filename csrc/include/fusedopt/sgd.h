// SGD with optional momentum, dampening and Nesterov momentum, as
// torch.optim.SGD computes it (Sutskever et al., 2013 form):
//   b = g on the first step, else momentum b + (1 - dampening) g
//   d = g + momentum b (nesterov) or b;    p -= lr d
// and in the velocity form of the seed document (fusedopt.classic):
//   v = momentum v - lr g;   p += v,  or  p += momentum v - lr g (Nesterov,
//   with the gradient taken at p).
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
};

enum class Momentum : int { kNone = 0, kClassic = 1, kNesterov = 2, kVelocity = 3, kVelocityNesterov = 4 };

// torch.optim.SGD's form of momentum for these options.
inline Momentum torch_momentum(double momentum, bool nesterov) {
  return momentum == 0.0 ? Momentum::kNone : nesterov ? Momentum::kNesterov : Momentum::kClassic;
}

// Slots: s[0] param, s[1] momentum_buffer. `First` is the step on which the
// buffer is born (torch clones the gradient into it).
template <typename M, bool Maximize, bool L2Decay, Momentum Mom, bool First>
struct SgdUpdate {
  static constexpr int kStates = Mom == Momentum::kNone ? 1 : 2;
  using Hyper = SgdHyper;

  M neg_lr, momentum, one_minus_dampening, weight_decay;

  SgdUpdate() = default;  // CUDA launches carry functors in a by-value array
  FUSEDOPT_HD explicit SgdUpdate(const SgdHyper& h)
      : neg_lr(static_cast<M>(-h.lr)),
        momentum(static_cast<M>(h.momentum)),
        one_minus_dampening(static_cast<M>(1.0 - h.dampening)),
        weight_decay(static_cast<M>(h.weight_decay)) {}
  static FUSEDOPT_HD SgdUpdate at_step(const SgdHyper& h, double) { return SgdUpdate(h); }

  template <typename V>
  FUSEDOPT_HD void operator()(V grad, V* s) const {
    V& param = s[0];
    grad = effective_grad<Maximize, L2Decay>(grad, param, weight_decay);
    if constexpr (Mom == Momentum::kVelocity || Mom == Momentum::kVelocityNesterov) {
      V& velocity = s[1];
      velocity = momentum * velocity + neg_lr * grad;
      if constexpr (Mom == Momentum::kVelocityNesterov) {
        param = param + (momentum * velocity + neg_lr * grad);
      } else {
        param = param + velocity;
      }
      return;
    } else if constexpr (Mom != Momentum::kNone) {
      V& buf = s[1];
      if constexpr (First) {
        buf = grad;
      } else {
        buf = buf * momentum + one_minus_dampening * grad;
      }
      if constexpr (Mom == Momentum::kNesterov) {
        grad = grad + momentum * buf;
      } else {
        grad = buf;
      }
    }
    param = param + neg_lr * grad;
  }
};

}  // namespace math
}  // namespace fusedopt
