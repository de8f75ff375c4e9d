// CPU implementations of the fusedopt ops: check the tensor lists, turn them
// into plain pointers, form the per-step scalars in double, and run the
// kernel for the active instruction set in one parallel region.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "kernel_api.h"
#include "run_kernel.h"
#include "../tensor_lists.h"

namespace fusedopt {
namespace cpu {
namespace {

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
              double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
              bool maximize, bool decoupled_weight_decay) {
  PreparedLists prepared("adam_", c10::DeviceType::CPU, params, grads,
                         {{"exp_avgs", exp_avgs},
                          {"exp_avg_sqs", exp_avg_sqs},
                          {"max_exp_avg_sqs", amsgrad ? max_exp_avg_sqs : at::TensorList()}});
  AdamArgs args;
  args.hyper = {lr, beta1, beta2, eps, weight_decay};
  args.decay = math::adam_decay(weight_decay, decoupled_weight_decay);
  args.amsgrad = amsgrad;
  args.maximize = maximize;
  const std::vector<double> steps = increment_steps("adam_", state_steps, params.size());
  std::vector<math::AdamStep<double>> per_tensor(steps.size());
  math::adam_step_scalars_list(args.hyper, steps.data(), static_cast<int64_t>(steps.size()), per_tensor.data());
  args.step = per_tensor.data();
  run(prepared, active_kernels().adam, args);
}

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             double lr, double weight_decay, double momentum, double dampening, bool nesterov,
             bool maximize, at::IntArrayRef first_step) {
  const bool has_momentum = momentum != 0.0;
  PreparedLists prepared("sgd_", c10::DeviceType::CPU, params, grads,
                         {{"momentum_buffers", has_momentum ? momentum_buffers : at::TensorList()}});
  TORCH_CHECK(!has_momentum || first_step.size() == params.size(),
              "fusedopt.sgd_: first_step has ", first_step.size(), " entries for ", params.size(),
              " params");
  TORCH_CHECK(!nesterov || has_momentum, "fusedopt.sgd_: nesterov requires a nonzero momentum");
  const std::vector<uint8_t> first(first_step.begin(), first_step.end());
  SgdArgs args;
  args.hyper = {lr, momentum, dampening, weight_decay};
  args.momentum = math::torch_momentum(momentum, nesterov);
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  args.first_step = first.data();
  run(prepared, active_kernels().sgd, args);
}

void adagrad_cpu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                 at::TensorList state_steps, double lr, double lr_decay, double weight_decay,
                 double eps, bool maximize) {
  PreparedLists prepared("adagrad_", c10::DeviceType::CPU, params, grads, {{"state_sums", state_sums}});
  AdagradArgs args;
  args.hyper = {lr, lr_decay, eps, weight_decay};
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  const std::vector<double> steps = increment_steps("adagrad_", state_steps, params.size());
  std::vector<double> neg_clr(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) neg_clr[i] = math::adagrad_neg_clr<double>(args.hyper, steps[i]);
  args.neg_clr = neg_clr.data();
  run(prepared, active_kernels().adagrad, args);
}

void rmsprop_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                 at::TensorList momentum_buffers, at::TensorList grad_avgs, at::TensorList state_steps,
                 double lr, double alpha, double eps, double weight_decay, double momentum,
                 bool centered, bool maximize) {
  const bool has_momentum = momentum > 0.0;
  // Slot order of math::RmspropUpdate: square_avg, momentum_buffer, grad_avg.
  PreparedLists prepared("rmsprop_", c10::DeviceType::CPU, params, grads,
                         {{"square_avgs", square_avgs},
                          {"momentum_buffers", has_momentum ? momentum_buffers : at::TensorList()},
                          {"grad_avgs", centered ? grad_avgs : at::TensorList()}});
  RmspropArgs args;
  args.hyper = {lr, alpha, eps, weight_decay, momentum};
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  args.centered = centered;
  args.momentum = has_momentum;
  increment_steps("rmsprop_", state_steps, params.size());
  run(prepared, active_kernels().rmsprop, args);
}

void traffic_cpu(at::TensorList params, at::TensorList grads, at::TensorList states1,
                 at::TensorList states2, at::TensorList states3) {
  PreparedLists prepared("traffic_", c10::DeviceType::CPU, params, grads,
                         {{"states1", states1}, {"states2", states2}, {"states3", states3}});
  TrafficArgs args;
  args.states = 1 + int(!states1.empty()) + int(!states2.empty()) + int(!states3.empty());
  run(prepared, active_kernels().traffic, args);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("adam_", &fusedopt::cpu::adam_cpu);
  m.impl("sgd_", &fusedopt::cpu::sgd_cpu);
  m.impl("adagrad_", &fusedopt::cpu::adagrad_cpu);
  m.impl("rmsprop_", &fusedopt::cpu::rmsprop_cpu);
  m.impl("traffic_", &fusedopt::cpu::traffic_cpu);
}
