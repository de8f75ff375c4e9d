// The update functor that an op's runtime options select, named once for the
// CPU kernels and the CUDA launches. Each with_*_update<M>(args, fn) calls
// fn(Variant<Update>{}) with the functor type for the options in args, so
// the option nest is written once and no inner loop tests an option.
#pragma once

#include "fusedopt/dispatch.h"
#include "kernel_api.h"

namespace fusedopt {

template <class U>
struct Variant {
  using Update = U;
};

template <typename M, class Fn>
void with_adam_update(const cpu::AdamArgs& a, Fn&& fn) {
  using math::Decay;
  with_bool(a.maximize, [&](auto maximize) {
    with_bool(a.amsgrad, [&](auto amsgrad) {
      with_enum<Decay::kNone, Decay::kL2, Decay::kDecoupled>(a.decay, [&](auto decay) {
        fn(Variant<math::AdamUpdate<M, maximize.value, decay.value, amsgrad.value>>{});
      });
    });
  });
}

// SGD's functor comes in two forms: fn(later, first), where first is the
// form for tensors whose momentum buffer is new.
template <typename M, class Fn>
void with_sgd_update(const cpu::SgdArgs& a, Fn&& fn) {
  using math::Momentum;
  with_bool(a.maximize, [&](auto maximize) {
    with_bool(a.weight_decay, [&](auto decay) {
      with_enum<Momentum::kNone, Momentum::kClassic, Momentum::kNesterov, Momentum::kVelocity,
                Momentum::kVelocityNesterov>(a.momentum, [&](auto momentum) {
        fn(Variant<math::SgdUpdate<M, maximize.value, decay.value, momentum.value, false>>{},
           Variant<math::SgdUpdate<M, maximize.value, decay.value, momentum.value, true>>{});
      });
    });
  });
}

template <typename M, class Fn>
void with_adagrad_update(const cpu::AdagradArgs& a, Fn&& fn) {
  with_bool(a.maximize, [&](auto maximize) {
    with_bool(a.weight_decay, [&](auto decay) {
      fn(Variant<math::AdagradUpdate<M, maximize.value, decay.value>>{});
    });
  });
}

template <typename M, class Fn>
void with_rmsprop_update(const cpu::RmspropArgs& a, Fn&& fn) {
  with_bool(a.maximize, [&](auto maximize) {
    with_bool(a.weight_decay, [&](auto decay) {
      with_bool(a.centered, [&](auto centered) {
        with_bool(a.momentum, [&](auto momentum) {
          with_bool(a.seed_form, [&](auto seed) {
            fn(Variant<math::RmspropUpdate<M, maximize.value, decay.value, centered.value, momentum.value,
                                           seed.value>>{});
          });
        });
      });
    });
  });
}

template <typename M, class Fn>
void with_traffic_update(const cpu::TrafficArgs& a, Fn&& fn) {
  with_enum<1, 2, 3, 4>(a.states, [&](auto states) { fn(Variant<math::TrafficUpdate<M, states.value>>{}); });
}

}  // namespace fusedopt
