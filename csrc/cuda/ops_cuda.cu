// CUDA implementations of the fusedopt ops, registered under the same names
// as the CPU ones: the same list checks and host-side step scalars, and the
// same per-element functors, launched by multi_tensor_apply.
//
// Not yet here: capturable steps (the step count is read on the host) and the
// AMP grad_scale/found_inf arguments; neither has ever run on a GPU in CI.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "fusedopt/dispatch.h"
#include "tensor_lists.h"

namespace fusedopt {
namespace cuda {
namespace {

using cpu::Dtype;
using math::Decay;
using math::Momentum;

template <class Fn>
void with_dtype(Dtype d, Fn&& fn) {
  switch (d) {
    case Dtype::kFloat32: fn(float{}); break;
    case Dtype::kFloat64: fn(double{}); break;
    case Dtype::kBFloat16: fn(c10::BFloat16{}); break;
    case Dtype::kFloat16: fn(c10::Half{}); break;
  }
}

template <class Body>
void run(PreparedLists& prepared, at::TensorList params, Body&& body) {
  if (prepared.size() > 0 && prepared.lists().offset[prepared.size()] > 0) {
    const c10::cuda::CUDAGuard guard(params[0].device());
    body(prepared.lists());
  }
  prepared.finish();
}

void adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
               at::TensorList max_exp_avg_sqs, at::TensorList state_steps, double lr, double beta1, double beta2,
               double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  PreparedLists prepared("adam_", c10::DeviceType::CUDA, params, grads,
                         {{"exp_avgs", exp_avgs},
                          {"exp_avg_sqs", exp_avg_sqs},
                          {"max_exp_avg_sqs", amsgrad ? max_exp_avg_sqs : at::TensorList()}});
  const math::AdamHyper hyper{lr, beta1, beta2, eps, weight_decay};
  const Decay decay = math::adam_decay(weight_decay, decoupled_weight_decay);
  const std::vector<double> steps = increment_steps("adam_", state_steps, params.size());
  std::vector<math::AdamStep<double>> per_tensor(steps.size());
  math::adam_step_scalars_list(hyper, steps.data(), static_cast<int64_t>(steps.size()), per_tensor.data());
  run(prepared, params, [&](const cpu::TensorLists& l) {
    with_dtype(l.dtype, [&](auto tag) {
      using T = decltype(tag);
      using M = typename MathOf<T>::type;
      with_bool(maximize, [&](auto max) {
        with_bool(amsgrad, [&](auto ams) {
          with_enum<Decay::kNone, Decay::kL2, Decay::kDecoupled>(decay, [&](auto d) {
            using Update = math::AdamUpdate<M, max.value, d.value, ams.value>;
            multi_tensor_apply<T, Update>(l, [&](int64_t t) {
              return Update(hyper, math::AdamStep<M>{static_cast<M>(per_tensor[t].neg_step_size),
                                                     static_cast<M>(per_tensor[t].bias_correction2_sqrt)});
            });
          });
        });
      });
    });
  });
}

void sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
              double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
              at::IntArrayRef first_step) {
  const bool has_momentum = momentum != 0.0;
  PreparedLists prepared("sgd_", c10::DeviceType::CUDA, params, grads,
                         {{"momentum_buffers", has_momentum ? momentum_buffers : at::TensorList()}});
  TORCH_CHECK(!has_momentum || first_step.size() == params.size(), "fusedopt.sgd_: first_step has ",
              first_step.size(), " entries for ", params.size(), " params");
  TORCH_CHECK(!nesterov || has_momentum, "fusedopt.sgd_: nesterov requires a nonzero momentum");
  const math::SgdHyper hyper{lr, momentum, dampening, weight_decay};
  const Momentum mom = math::torch_momentum(momentum, nesterov);
  run(prepared, params, [&](const cpu::TensorLists& all) {
    // Tensors whose buffer is new take the First variant: split the list.
    for (const bool first : {true, false}) {
      if (first && !has_momentum) continue;
      std::vector<int64_t> offset{0};
      std::vector<const void*> g;
      std::vector<void*> p, b;
      for (int64_t t = 0; t < all.count; ++t) {
        if (has_momentum && (first_step[t] != 0) != first) continue;
        offset.push_back(offset.back() + all.offset[t + 1] - all.offset[t]);
        g.push_back(all.grads[t]);
        p.push_back(all.states[0][t]);
        if (has_momentum) b.push_back(all.states[1][t]);
      }
      cpu::TensorLists l = all;
      l.count = static_cast<int64_t>(g.size());
      l.offset = offset.data();
      l.grads = g.data();
      l.states[0] = p.data();
      l.states[1] = b.data();
      with_dtype(l.dtype, [&](auto tag) {
        using T = decltype(tag);
        using M = typename MathOf<T>::type;
        with_bool(maximize, [&](auto max) {
          with_bool(weight_decay != 0.0, [&](auto wd) {
            with_enum<Momentum::kNone, Momentum::kClassic, Momentum::kNesterov>(mom, [&](auto m) {
              with_bool(first, [&](auto is_first) {
                using Update = math::SgdUpdate<M, max.value, wd.value, m.value, is_first.value>;
                multi_tensor_apply<T, Update>(l, [&](int64_t) { return Update(hyper); });
              });
            });
          });
        });
      });
    }
  });
}

void adagrad_cuda(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                  at::TensorList state_steps, double lr, double lr_decay, double weight_decay, double eps,
                  bool maximize) {
  PreparedLists prepared("adagrad_", c10::DeviceType::CUDA, params, grads, {{"state_sums", state_sums}});
  const math::AdagradHyper hyper{lr, lr_decay, eps, weight_decay};
  const std::vector<double> steps = increment_steps("adagrad_", state_steps, params.size());
  run(prepared, params, [&](const cpu::TensorLists& l) {
    with_dtype(l.dtype, [&](auto tag) {
      using T = decltype(tag);
      using M = typename MathOf<T>::type;
      with_bool(maximize, [&](auto max) {
        with_bool(weight_decay != 0.0, [&](auto wd) {
          using Update = math::AdagradUpdate<M, max.value, wd.value>;
          multi_tensor_apply<T, Update>(l, [&](int64_t t) {
            return Update(hyper, math::adagrad_neg_clr<M>(hyper, steps[t]));
          });
        });
      });
    });
  });
}

void rmsprop_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                  at::TensorList momentum_buffers, at::TensorList grad_avgs, at::TensorList state_steps, double lr,
                  double alpha, double eps, double weight_decay, double momentum, bool centered, bool maximize) {
  const bool has_momentum = momentum > 0.0;
  PreparedLists prepared("rmsprop_", c10::DeviceType::CUDA, params, grads,
                         {{"square_avgs", square_avgs},
                          {"momentum_buffers", has_momentum ? momentum_buffers : at::TensorList()},
                          {"grad_avgs", centered ? grad_avgs : at::TensorList()}});
  const math::RmspropHyper hyper{lr, alpha, eps, weight_decay, momentum};
  increment_steps("rmsprop_", state_steps, params.size());
  run(prepared, params, [&](const cpu::TensorLists& l) {
    with_dtype(l.dtype, [&](auto tag) {
      using T = decltype(tag);
      using M = typename MathOf<T>::type;
      with_bool(maximize, [&](auto max) {
        with_bool(weight_decay != 0.0, [&](auto wd) {
          with_bool(centered, [&](auto c) {
            with_bool(has_momentum, [&](auto m) {
              using Update = math::RmspropUpdate<M, max.value, wd.value, c.value, m.value>;
              multi_tensor_apply<T, Update>(l, [&](int64_t) { return Update(hyper); });
            });
          });
        });
      });
    });
  });
}

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("adam_", &fusedopt::cuda::adam_cuda);
  m.impl("sgd_", &fusedopt::cuda::sgd_cuda);
  m.impl("adagrad_", &fusedopt::cuda::adagrad_cuda);
  m.impl("rmsprop_", &fusedopt::cuda::rmsprop_cuda);
}
