// Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), as
// torch.optim.Adam / AdamW compute them, one element at a time.
//   m = lerp(m, g, 1 - beta1)            v = beta2 v + (1 - beta2) g^2
//   v_max = max(v_max, v)  (amsgrad)     p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// with bc_i = 1 - beta_i^step. Per-step scalars are formed on the host in
// double (as torch.optim does in Python) and rounded to the math type once.
// torch divides by sqrt(bc2); multiplying by its reciprocal (formed in
// double) differs by an ulp of the denominator at most and leaves one
// division per element instead of two, which on the CPU is what bounds the
// step once the data is in cache (float32 Adam 2.0 -> 2.9 G elements/s per
// core on the AVX2 dev VM), and so bfloat16 steps and small tensors.
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
};

// What changes with the step count of one tensor.
template <typename M>
struct AdamStep {
  M neg_step_size;              // -lr / (1 - beta1^step)
  M inv_bias_correction2_sqrt;  // 1 / sqrt(1 - beta2^step)
};

template <typename M>
FUSEDOPT_HD AdamStep<M> adam_step_scalars(const AdamHyper& h, double step) {
  const double bias_correction1 = 1.0 - pow_(h.beta1, step);
  const double bias_correction2 = 1.0 - pow_(h.beta2, step);
  return {static_cast<M>(-(h.lr / bias_correction1)), static_cast<M>(1.0 / sqrt_(bias_correction2))};
}

// How torch.optim.Adam applies weight_decay: not at all, added to the
// gradient (Adam), or to the parameter directly (AdamW).
inline Decay adam_decay(double weight_decay, bool decoupled) {
  return weight_decay == 0.0 ? Decay::kNone : decoupled ? Decay::kDecoupled : Decay::kL2;
}

// The step scalars of a list of tensors; neighbours with the same step
// (the usual case) share one computation. `out` holds n entries.
inline void adam_step_scalars_list(const AdamHyper& h, const double* steps, int64_t n, AdamStep<double>* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = (i > 0 && steps[i] == steps[i - 1]) ? out[i - 1] : adam_step_scalars<double>(h, steps[i]);
  }
}

// Slots: s[0] param, s[1] exp_avg, s[2] exp_avg_sq, s[3] max_exp_avg_sq.
template <typename M, bool Maximize, Decay D, bool Amsgrad>
struct AdamUpdate {
  static constexpr int kStates = Amsgrad ? 4 : 3;
  using Hyper = AdamHyper;

  M lerp_weight, beta2, one_minus_beta2, weight_decay, decay_factor, eps;
  AdamStep<M> step;

  AdamUpdate() = default;  // CUDA launches carry functors in a by-value array
  FUSEDOPT_HD AdamUpdate(const AdamHyper& h, AdamStep<M> s)
      : lerp_weight(static_cast<M>(1.0 - h.beta1)),
        beta2(static_cast<M>(h.beta2)),
        one_minus_beta2(static_cast<M>(1.0 - h.beta2)),
        weight_decay(static_cast<M>(h.weight_decay)),
        decay_factor(static_cast<M>(1.0 - h.lr * h.weight_decay)),
        eps(static_cast<M>(h.eps)),
        step(s) {}
  // The functor of a tensor at `step` (CUDA graphs: step and lr read on the device).
  static FUSEDOPT_HD AdamUpdate at_step(const AdamHyper& h, double step) {
    return AdamUpdate(h, adam_step_scalars<M>(h, step));
  }

  template <typename V>
  FUSEDOPT_HD void operator()(V grad, V* s) const {
    V& param = s[0];
    V& exp_avg = s[1];
    V& exp_avg_sq = s[2];
    if constexpr (D == Decay::kDecoupled) param = param * decay_factor;
    grad = effective_grad<Maximize, D == Decay::kL2>(grad, param, weight_decay);
    exp_avg = lerp(exp_avg, grad, lerp_weight);
    exp_avg_sq = exp_avg_sq * beta2 + one_minus_beta2 * grad * grad;
    V second_moment = exp_avg_sq;
    if constexpr (Amsgrad) {
      s[3] = maximum(s[3], exp_avg_sq);
      second_moment = s[3];
    }
    const V denom = sqrt_(second_moment) * step.inv_bias_correction2_sqrt + eps;
    param = param + step.neg_step_size * (exp_avg / denom);
  }
};

}  // namespace math
}  // namespace fusedopt
