// Not an optimizer: the memory traffic of one, with trivial arithmetic. The
// benchmarks time it beside each algorithm with the same number of state
// streams, as the limit a one-pass step on this machine can reach.
#pragma once

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

struct TrafficHyper {
  double lr;  // unused: every functor's hyperparameters carry an lr
};

// Slots s[0..States): each read once and written once, the gradient read once.
template <typename M, int States>
struct TrafficUpdate {
  static constexpr int kStates = States;
  using Hyper = TrafficHyper;
  static FUSEDOPT_HD TrafficUpdate at_step(const TrafficHyper&, double) { return {}; }

  template <typename V>
  FUSEDOPT_HD void operator()(V grad, V* s) const {
    for (int k = 0; k < States; ++k) s[k] = s[k] + grad;
  }
};

}  // namespace math
}  // namespace fusedopt
