// CPU implementations of the fusedopt.classic ops: the seed document's
// update(w, alpha, dw, dr, lambdaa) rules, run by the same kernels as the
// torch.optim-style ops with the seed's variants selected (velocity momentum,
// eps inside RMSProp's root) and g = dw + lambdaa * dr read in the same pass.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "kernel_api.h"
#include "run_kernel.h"
#include "../tensor_lists.h"

namespace fusedopt {
namespace cpu {
namespace {

void regularize(PreparedLists& prepared, at::TensorList drs, double lambdaa) {
  if (!drs.empty()) prepared.lists().reg_weight = lambdaa;
}

void classic_sgd_cpu(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList velocities,
                     double alpha, double lambdaa, double epsilon, bool nesterov) {
  PreparedLists prepared("classic_sgd_", c10::DeviceType::CPU, ws, dws, {{"velocities", velocities}}, drs);
  regularize(prepared, drs, lambdaa);
  SgdArgs args;
  args.hyper = {alpha, epsilon, 0.0, 0.0};
  args.momentum = velocities.empty() ? math::Momentum::kNone
                  : nesterov         ? math::Momentum::kVelocityNesterov
                                     : math::Momentum::kVelocity;
  args.weight_decay = false;
  args.maximize = false;
  args.first_step = nullptr;
  run(prepared, active_kernels().sgd, args);
}

void classic_adagrad_cpu(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList rs,
                         double alpha, double lambdaa, double delta) {
  PreparedLists prepared("classic_adagrad_", c10::DeviceType::CPU, ws, dws, {{"rs", rs}}, drs);
  regularize(prepared, drs, lambdaa);
  AdagradArgs args;
  args.hyper = {alpha, 0.0, delta, 0.0};
  args.weight_decay = false;
  args.maximize = false;
  const std::vector<double> neg_alpha(ws.size(), -alpha);
  args.neg_clr = neg_alpha.data();
  run(prepared, active_kernels().adagrad, args);
}

void classic_rmsprop_cpu(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList rs,
                         at::TensorList velocities, double alpha, double lambdaa, double rho, double delta,
                         double epsilon) {
  PreparedLists prepared("classic_rmsprop_", c10::DeviceType::CPU, ws, dws,
                         {{"rs", rs}, {"velocities", velocities}}, drs);
  regularize(prepared, drs, lambdaa);
  RmspropArgs args;
  args.hyper = {alpha, rho, delta, 0.0, epsilon};
  args.weight_decay = false;
  args.maximize = false;
  args.centered = false;
  args.momentum = !velocities.empty();
  args.seed_form = true;
  run(prepared, active_kernels().rmsprop, args);
}

void classic_adam_cpu(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList ss,
                      at::TensorList rs, at::TensorList steps, double alpha, double lambdaa, double rho1,
                      double rho2, double delta) {
  PreparedLists prepared("classic_adam_", c10::DeviceType::CPU, ws, dws, {{"ss", ss}, {"rs", rs}}, drs);
  regularize(prepared, drs, lambdaa);
  AdamArgs args;
  args.hyper = {alpha, rho1, rho2, delta, 0.0};
  args.decay = math::Decay::kNone;
  args.amsgrad = false;
  args.maximize = false;
  const std::vector<double> t = increment_steps("classic_adam_", steps, ws.size());
  std::vector<math::AdamStep<double>> per_tensor(t.size());
  math::adam_step_scalars_list(args.hyper, t.data(), static_cast<int64_t>(t.size()), per_tensor.data());
  args.step = per_tensor.data();
  run(prepared, active_kernels().adam, args);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("classic_sgd_", &fusedopt::cpu::classic_sgd_cpu);
  m.impl("classic_adagrad_", &fusedopt::cpu::classic_adagrad_cpu);
  m.impl("classic_rmsprop_", &fusedopt::cpu::classic_rmsprop_cpu);
  m.impl("classic_adam_", &fusedopt::cpu::classic_adam_cpu);
}
