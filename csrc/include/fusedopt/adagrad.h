// Adagrad (Duchi et al., 2011), as torch.optim.Adagrad computes it:
//   sum += g^2;   p -= clr g / (sqrt(sum) + eps),   clr = lr / (1 + (step - 1) lr_decay)
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

struct AdagradHyper {
  double lr, lr_decay, eps, weight_decay;
};

template <typename M>
FUSEDOPT_HD M adagrad_neg_clr(const AdagradHyper& h, double step) {
  return static_cast<M>(-(h.lr / (1.0 + (step - 1.0) * h.lr_decay)));
}

// Slots: s[0] param, s[1] sum.
template <typename M, bool Maximize, bool L2Decay>
struct AdagradUpdate {
  static constexpr int kStates = 2;
  using Hyper = AdagradHyper;

  M eps, weight_decay, neg_clr;

  AdagradUpdate() = default;  // CUDA launches carry functors in a by-value array
  FUSEDOPT_HD AdagradUpdate(const AdagradHyper& h, M neg_clr_for_step)
      : eps(static_cast<M>(h.eps)),
        weight_decay(static_cast<M>(h.weight_decay)),
        neg_clr(neg_clr_for_step) {}
  static FUSEDOPT_HD AdagradUpdate at_step(const AdagradHyper& h, double step) {
    return AdagradUpdate(h, adagrad_neg_clr<M>(h, step));
  }

  template <typename V>
  FUSEDOPT_HD void operator()(V grad, V* s) const {
    V& param = s[0];
    V& sum = s[1];
    grad = effective_grad<Maximize, L2Decay>(grad, param, weight_decay);
    sum = sum + grad * grad;
    const V std_ = sqrt_(sum) + eps;
    param = param + neg_clr * (grad / std_);
  }
};

}  // namespace math
}  // namespace fusedopt
