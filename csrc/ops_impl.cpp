#include "ops_impl.h"

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>

#include <array>
#include <optional>
#include <vector>

#include "device_kernels.h"
#include "message.h"
#include "precision.h"
#include "tensor_lists.h"

namespace fusedopt {
namespace {

using OptTensor = std::optional<at::Tensor>;

std::array<const DeviceKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>& registry() {
  static std::array<const DeviceKernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> r{};
  return r;
}

c10::DeviceType device_of(at::TensorList params) {
  return params.empty() || !params[0].defined() ? c10::DeviceType::CPU : params[0].device().type();
}

const DeviceKernels& kernels_for(const char* op, c10::DeviceType type) {
  const DeviceKernels* k = device_kernels(type);
  FUSEDOPT_CHECK(k != nullptr, "fusedopt.", op, ": this build has no kernels for ", c10::DeviceTypeName(type),
              " tensors");
  return *k;
}

// The device of an op's params: its kernel table, made current for the call.
class OnDevice {
 public:
  OnDevice(const char* op, at::TensorList params)
      : type(device_of(params)),
        kernels(kernels_for(op, type)),
        guard_(params.empty() ? std::nullopt : std::optional(params[0].device())) {}

  const c10::DeviceType type;
  const DeviceKernels& kernels;

 private:
  const c10::OptionalDeviceGuard guard_;
};

// A one-element float32 tensor the kernels read on their device.
const float* device_scalar(const char* op, const char* name, const at::Tensor& t, const at::Tensor& param) {
  FUSEDOPT_CHECK(t.numel() == 1 && t.scalar_type() == at::kFloat, "fusedopt.", op, ": ", name,
              " must be a one-element float32 tensor, got ", t.scalar_type(), " of shape ", t.sizes());
  FUSEDOPT_CHECK(t.device() == param.device(), "fusedopt.", op, ": ", name, " is on ", t.device(),
              " but the params are on ", param.device());
  return t.const_data_ptr<float>();
}

// What every torch-style op shares beyond its lists: the step counts (CPU
// tensors counted on the host, or tensors on the params' device counted by
// the device: capturable), lr (a float, or a tensor read on the host or, with
// device steps, on the device) and AMP's grad_scale / found_inf.
class StepInputs {
 public:
  StepInputs(const char* op, const DeviceKernels& k, PreparedLists& prepared, at::TensorList params,
             at::TensorList steps, bool has_steps, double lr, const OptTensor& lr_tensor,
             const OptTensor& grad_scale, const OptTensor& found_inf)
      : lr_(lr) {
    cpu::TensorLists& l = prepared.lists();
    const bool any = !params.empty();
    device_steps_ = has_steps && any && !steps.empty() && steps[0].defined() && !steps[0].device().is_cpu();
    if (device_steps_) {
      FUSEDOPT_CHECK(k.increment_steps != nullptr, "fusedopt.", op, ": state_steps must be CPU tensors for ",
                  params[0].device().type(), " params");
      FUSEDOPT_CHECK(steps.size() == params.size(), "fusedopt.", op, ": got ", params.size(), " params but ",
                  steps.size(), " state_steps");
      step_ptrs_.resize(steps.size());
      for (size_t i = 0; i < steps.size(); ++i) {
        const at::Tensor& s = steps[i];
        FUSEDOPT_CHECK(s.defined() && s.numel() == 1 && s.device() == params[0].device() &&
                        s.scalar_type() == at::kFloat,
                    "fusedopt.", op, ": state_steps[", i, "] must be a one-element float32 tensor on ",
                    params[0].device(), " (capturable steps) or a CPU tensor");
        step_ptrs_[i] = s.mutable_data_ptr<float>();
      }
    }
    // found_inf goes to the kernels when they can honour it without the host:
    // on the params' device, and no host step count depends on it.
    if (found_inf.has_value()) {
      const bool on_device = any && found_inf->device() == params[0].device() && !found_inf->device().is_cpu();
      if (on_device && (device_steps_ || !has_steps)) {
        l.found_inf = device_scalar(op, "found_inf", *found_inf, params[0]);
      } else {
        skip_ = found_inf->item<double>() != 0.0;
      }
    }
    if (lr_tensor.has_value()) {
      FUSEDOPT_CHECK(lr_tensor->numel() == 1, "fusedopt.", op, ": lr_tensor must have one element");
      if (device_steps_ && lr_tensor->device() == params[0].device()) {
        lr_float_ = lr_tensor->to(at::kFloat);
        l.device_lr = lr_float_.const_data_ptr<float>();
      } else {
        lr_ = lr_tensor->item<double>();
      }
    }
    if (grad_scale.has_value() && any) l.grad_scale = device_scalar(op, "grad_scale", *grad_scale, params[0]);
    if (skip_) return;
    if (device_steps_) {
      k.increment_steps(step_ptrs_.data(), static_cast<int64_t>(step_ptrs_.size()), l.found_inf);
      l.device_steps = step_ptrs_.data();
    } else if (has_steps) {
      host_steps_ = increment_steps(op, steps, params.size(), device_of(params));
    }
  }

  // found_inf was set (read on the host): nothing changes, step counts included.
  bool skip() const { return skip_; }
  double lr() const { return lr_; }
  // The incremented host step counts (empty with device steps).
  const std::vector<double>& host_steps() const { return host_steps_; }
  bool device_steps() const { return device_steps_; }

 private:
  double lr_;
  bool skip_ = false;
  bool device_steps_ = false;
  at::Tensor lr_float_;
  std::vector<float*> step_ptrs_;
  std::vector<double> host_steps_;
};

// 1 - beta^step is zero for every step when |beta| = 1: the step size would be
// infinite (torch.optim.Adam raises ZeroDivisionError), so nothing is updated.
void check_bias_correction(const char* op, const char* name, double beta) {
  FUSEDOPT_CHECK_VALUE(beta != 1.0 && beta != -1.0, "fusedopt.", op, ": ", name, " is ", beta,
                       ", so the bias correction 1 - ", name, "^step is zero");
}

std::vector<math::AdamStep<double>> adam_scalars(const math::AdamHyper& hyper, const std::vector<double>& steps) {
  std::vector<math::AdamStep<double>> out(steps.size());
  math::adam_step_scalars_list(hyper, steps.data(), static_cast<int64_t>(steps.size()), out.data());
  return out;
}

void adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
          at::TensorList max_exp_avg_sqs, at::TensorList state_steps, at::TensorList companions, double lr, double beta1, double beta2,
          double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
          const OptTensor& lr_tensor, const OptTensor& grad_scale, const OptTensor& found_inf,
          c10::string_view param_precision, std::optional<at::ScalarType> state_dtype, bool stochastic_states,
          int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  const OnDevice on("adam_", params);
  const DeviceKernels& k = on.kernels;
  Precision precision("adam_", param_precision, state_dtype, stochastic_states, seed, rng_ids, index_map, companions);
  PreparedLists prepared = precision.prepare(
      "adam_", on.type, params, grads,
      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
      grad_scale.has_value());
  check_bias_correction("adam_", "beta1", beta1);
  Precision::quant_slots(prepared, {cpu::Quant::kSigned, cpu::Quant::kUnsigned,
                                    amsgrad ? cpu::Quant::kUnsigned : cpu::Quant::kNone});
  const StepInputs in("adam_", k, prepared, params, state_steps, true, lr, lr_tensor, grad_scale, found_inf);
  if (in.skip()) return;
  precision.apply("adam_", prepared, in.host_steps(), in.device_steps());
  cpu::AdamArgs args;
  args.hyper = {in.lr(), beta1, beta2, eps, weight_decay};
  args.decay = math::adam_decay(weight_decay, decoupled_weight_decay);
  args.amsgrad = amsgrad;
  args.maximize = maximize;
  const std::vector<math::AdamStep<double>> per_tensor = adam_scalars(args.hyper, in.host_steps());
  args.step = per_tensor.data();
  k.adam(prepared.lists(), args);
  prepared.finish();
}

void sgd(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList state_steps,
         at::TensorList companions, double lr,
         double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
         at::IntArrayRef first_step, const OptTensor& lr_tensor, const OptTensor& grad_scale, const OptTensor& found_inf,
          c10::string_view param_precision, std::optional<at::ScalarType> state_dtype, bool stochastic_states,
          int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  const OnDevice on("sgd_", params);
  const DeviceKernels& k = on.kernels;
  const bool has_momentum = momentum != 0.0;
  Precision precision("sgd_", param_precision, state_dtype, stochastic_states, seed, rng_ids, index_map, companions);
  PreparedLists prepared = precision.prepare("sgd_", on.type, params, grads,
                                             {{"momentum_buffers", momentum_buffers, has_momentum}},
                                             grad_scale.has_value());
  FUSEDOPT_CHECK(!has_momentum || first_step.size() == params.size(), "fusedopt.sgd_: first_step has ",
              first_step.size(), " entries for ", params.size(), " params");
  FUSEDOPT_CHECK(!nesterov || has_momentum, "fusedopt.sgd_: nesterov requires a nonzero momentum");
  Precision::quant_slots(prepared, {has_momentum ? cpu::Quant::kSigned : cpu::Quant::kNone});
  const StepInputs in("sgd_", k, prepared, params, state_steps, !state_steps.empty(), lr, lr_tensor, grad_scale,
                      found_inf);
  if (in.skip()) return;
  precision.apply("sgd_", prepared, in.host_steps(), in.device_steps());
  const std::vector<uint8_t> first(first_step.begin(), first_step.end());
  cpu::SgdArgs args;
  args.hyper = {in.lr(), momentum, dampening, weight_decay};
  args.momentum = math::torch_momentum(momentum, nesterov);
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  args.first_step = first.data();
  k.sgd(prepared.lists(), args);
  prepared.finish();
}

void adagrad(at::TensorList params, at::TensorList grads, at::TensorList state_sums, at::TensorList state_steps,
             at::TensorList companions, double lr, double lr_decay, double weight_decay, double eps, bool maximize,
             const OptTensor& lr_tensor, const OptTensor& grad_scale, const OptTensor& found_inf,
          c10::string_view param_precision, std::optional<at::ScalarType> state_dtype, bool stochastic_states,
          int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  const OnDevice on("adagrad_", params);
  const DeviceKernels& k = on.kernels;
  Precision precision("adagrad_", param_precision, state_dtype, stochastic_states, seed, rng_ids, index_map,
                      companions);
  PreparedLists prepared =
      precision.prepare("adagrad_", on.type, params, grads, {{"state_sums", state_sums}}, grad_scale.has_value());
  Precision::quant_slots(prepared, {cpu::Quant::kUnsigned});
  const StepInputs in("adagrad_", k, prepared, params, state_steps, true, lr, lr_tensor, grad_scale, found_inf);
  if (in.skip()) return;
  precision.apply("adagrad_", prepared, in.host_steps(), in.device_steps());
  cpu::AdagradArgs args;
  args.hyper = {in.lr(), lr_decay, eps, weight_decay};
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  std::vector<double> neg_clr(in.host_steps().size());
  for (size_t i = 0; i < neg_clr.size(); ++i) {
    neg_clr[i] = math::adagrad_neg_clr<double>(args.hyper, in.host_steps()[i]);
  }
  args.neg_clr = neg_clr.data();
  k.adagrad(prepared.lists(), args);
  prepared.finish();
}

void rmsprop(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
             at::TensorList momentum_buffers, at::TensorList grad_avgs, at::TensorList state_steps,
             at::TensorList companions, double lr,
             double alpha, double eps, double weight_decay, double momentum, bool centered, bool maximize,
             const OptTensor& lr_tensor, const OptTensor& grad_scale, const OptTensor& found_inf,
          c10::string_view param_precision, std::optional<at::ScalarType> state_dtype, bool stochastic_states,
          int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  const OnDevice on("rmsprop_", params);
  const DeviceKernels& k = on.kernels;
  const bool has_momentum = momentum > 0.0;
  Precision precision("rmsprop_", param_precision, state_dtype, stochastic_states, seed, rng_ids, index_map,
                      companions);
  // Slot order of math::RmspropUpdate: square_avg, momentum_buffer, grad_avg.
  PreparedLists prepared = precision.prepare("rmsprop_", on.type, params, grads,
                                             {{"square_avgs", square_avgs},
                                              {"momentum_buffers", momentum_buffers, has_momentum},
                                              {"grad_avgs", grad_avgs, centered}},
                                             grad_scale.has_value());
  Precision::quant_slots(prepared, {cpu::Quant::kUnsigned, has_momentum ? cpu::Quant::kSigned : cpu::Quant::kNone,
                                    centered ? cpu::Quant::kSigned : cpu::Quant::kNone});
  const StepInputs in("rmsprop_", k, prepared, params, state_steps, true, lr, lr_tensor, grad_scale, found_inf);
  if (in.skip()) return;
  precision.apply("rmsprop_", prepared, in.host_steps(), in.device_steps());
  cpu::RmspropArgs args;
  args.hyper = {in.lr(), alpha, eps, weight_decay, momentum};
  args.weight_decay = weight_decay != 0.0;
  args.maximize = maximize;
  args.centered = centered;
  args.momentum = has_momentum;
  k.rmsprop(prepared.lists(), args);
  prepared.finish();
}

// The `.flat` overloads (ops.cpp): the same steps on the per-param views of
// each flat state, without AMP.
void adam_flat(at::TensorList params, at::TensorList grads, const at::Tensor& exp_avgs,
               const at::Tensor& exp_avg_sqs, const OptTensor& max_exp_avg_sqs, const at::Tensor& state_steps,
               at::TensorList companions, double lr, double beta1, double beta2, double weight_decay, double eps,
               bool amsgrad, bool maximize, bool decoupled_weight_decay, const OptTensor& lr_tensor,
               c10::string_view param_precision, std::optional<at::ScalarType> state_dtype, bool stochastic_states,
               int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  adam(params, grads, unflatten("adam_", "exp_avgs", exp_avgs, params),
       unflatten("adam_", "exp_avg_sqs", exp_avg_sqs, params),
       unflatten("adam_", "max_exp_avg_sqs", max_exp_avg_sqs, params),
       unflatten("adam_", "state_steps", state_steps, params, true), companions, lr, beta1, beta2, weight_decay, eps,
       amsgrad, maximize, decoupled_weight_decay, lr_tensor, std::nullopt, std::nullopt, param_precision,
       state_dtype, stochastic_states, seed, rng_ids, index_map);
}

void sgd_flat(at::TensorList params, at::TensorList grads, const OptTensor& momentum_buffers,
              const OptTensor& state_steps, at::TensorList companions, double lr, double weight_decay,
              double momentum, double dampening, bool nesterov, bool maximize, at::IntArrayRef first_step,
              const OptTensor& lr_tensor, c10::string_view param_precision, std::optional<at::ScalarType> state_dtype,
              bool stochastic_states, int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  sgd(params, grads, unflatten("sgd_", "momentum_buffers", momentum_buffers, params),
      unflatten("sgd_", "state_steps", state_steps, params, true), companions, lr, weight_decay, momentum, dampening,
      nesterov, maximize, first_step, lr_tensor, std::nullopt, std::nullopt, param_precision, state_dtype,
      stochastic_states, seed, rng_ids, index_map);
}

void adagrad_flat(at::TensorList params, at::TensorList grads, const at::Tensor& state_sums,
                  const at::Tensor& state_steps, at::TensorList companions, double lr, double lr_decay,
                  double weight_decay, double eps, bool maximize, const OptTensor& lr_tensor,
                  c10::string_view param_precision, std::optional<at::ScalarType> state_dtype,
                  bool stochastic_states, int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  adagrad(params, grads, unflatten("adagrad_", "state_sums", state_sums, params),
          unflatten("adagrad_", "state_steps", state_steps, params, true), companions, lr, lr_decay, weight_decay,
          eps, maximize, lr_tensor, std::nullopt, std::nullopt, param_precision, state_dtype, stochastic_states, seed,
          rng_ids, index_map);
}

void rmsprop_flat(at::TensorList params, at::TensorList grads, const at::Tensor& square_avgs,
                  const OptTensor& momentum_buffers, const OptTensor& grad_avgs, const at::Tensor& state_steps,
                  at::TensorList companions, double lr, double alpha, double eps, double weight_decay,
                  double momentum, bool centered, bool maximize, const OptTensor& lr_tensor,
                  c10::string_view param_precision, std::optional<at::ScalarType> state_dtype,
                  bool stochastic_states, int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map) {
  rmsprop(params, grads, unflatten("rmsprop_", "square_avgs", square_avgs, params),
          unflatten("rmsprop_", "momentum_buffers", momentum_buffers, params),
          unflatten("rmsprop_", "grad_avgs", grad_avgs, params),
          unflatten("rmsprop_", "state_steps", state_steps, params, true), companions, lr, alpha, eps, weight_decay,
          momentum, centered, maximize, lr_tensor, std::nullopt, std::nullopt, param_precision, state_dtype,
          stochastic_states, seed, rng_ids, index_map);
}

void traffic(at::TensorList params, at::TensorList grads, at::TensorList states1, at::TensorList states2,
             at::TensorList states3) {
  const OnDevice on("traffic_", params);
  const DeviceKernels& k = on.kernels;
  PreparedLists prepared("traffic_", on.type, params, grads,
                         {{"states1", states1, !states1.empty()},
                          {"states2", states2, !states2.empty()},
                          {"states3", states3, !states3.empty()}});
  cpu::TrafficArgs args;
  args.states = 1 + int(!states1.empty()) + int(!states2.empty()) + int(!states3.empty());
  k.traffic(prepared.lists(), args);
  prepared.finish();
}

// fusedopt.classic: the seed document's update(w, alpha, dw, dr, lambdaa),
// run by the same kernels with the seed's variants (velocity momentum, eps
// inside RMSProp's root) and g = dw + lambdaa * dr read in the same pass.
PreparedLists classic_lists(const char* op, const OnDevice& on, at::TensorList ws, at::TensorList dws,
                            at::TensorList drs, std::initializer_list<NamedList> states, double lambdaa) {
  PreparedLists prepared(op, on.type, ws, dws, states, drs);
  if (!drs.empty()) prepared.lists().reg_weight = lambdaa;
  return prepared;
}

void classic_sgd(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList velocities,
                 double alpha, double lambdaa, double epsilon, bool nesterov) {
  const OnDevice on("classic_sgd_", ws);
  const DeviceKernels& k = on.kernels;
  // No velocities: plain gradient descent (the seed's SGD without momentum).
  PreparedLists prepared =
      classic_lists("classic_sgd_", on, ws, dws, drs, {{"velocities", velocities, !velocities.empty()}}, lambdaa);
  cpu::SgdArgs args;
  args.hyper = {alpha, epsilon, 0.0, 0.0};
  args.momentum = velocities.empty() ? math::Momentum::kNone
                  : nesterov         ? math::Momentum::kVelocityNesterov
                                     : math::Momentum::kVelocity;
  args.weight_decay = false;
  args.maximize = false;
  args.first_step = nullptr;
  k.sgd(prepared.lists(), args);
  prepared.finish();
}

void classic_adagrad(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList rs, double alpha,
                     double lambdaa, double delta) {
  const OnDevice on("classic_adagrad_", ws);
  const DeviceKernels& k = on.kernels;
  PreparedLists prepared = classic_lists("classic_adagrad_", on, ws, dws, drs, {{"rs", rs}}, lambdaa);
  cpu::AdagradArgs args;
  args.hyper = {alpha, 0.0, delta, 0.0};
  args.weight_decay = false;
  args.maximize = false;
  const std::vector<double> neg_alpha(ws.size(), -alpha);
  args.neg_clr = neg_alpha.data();
  k.adagrad(prepared.lists(), args);
  prepared.finish();
}

void classic_rmsprop(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList rs,
                     at::TensorList velocities, double alpha, double lambdaa, double rho, double delta,
                     double epsilon) {
  const OnDevice on("classic_rmsprop_", ws);
  const DeviceKernels& k = on.kernels;
  PreparedLists prepared =
      classic_lists("classic_rmsprop_", on, ws, dws, drs,
                    {{"rs", rs}, {"velocities", velocities, !velocities.empty()}}, lambdaa);
  cpu::RmspropArgs args;
  args.hyper = {alpha, rho, delta, 0.0, epsilon};
  args.weight_decay = false;
  args.maximize = false;
  args.centered = false;
  args.momentum = !velocities.empty();
  args.seed_form = true;
  k.rmsprop(prepared.lists(), args);
  prepared.finish();
}

void classic_adam(at::TensorList ws, at::TensorList dws, at::TensorList drs, at::TensorList ss,
                  at::TensorList rs, at::TensorList steps, double alpha, double lambdaa, double rho1, double rho2,
                  double delta) {
  const OnDevice on("classic_adam_", ws);
  const DeviceKernels& k = on.kernels;
  PreparedLists prepared = classic_lists("classic_adam_", on, ws, dws, drs, {{"ss", ss}, {"rs", rs}}, lambdaa);
  check_bias_correction("classic_adam_", "rho1", rho1);
  cpu::AdamArgs args;
  args.hyper = {alpha, rho1, rho2, delta, 0.0};
  args.decay = math::Decay::kNone;
  args.amsgrad = false;
  args.maximize = false;
  const std::vector<math::AdamStep<double>> per_tensor =
      adam_scalars(args.hyper, increment_steps("classic_adam_", steps, ws.size(), on.type));
  args.step = per_tensor.data();
  k.adam(prepared.lists(), args);
  prepared.finish();
}

}  // namespace

const DeviceKernels* device_kernels(c10::DeviceType type) { return registry()[static_cast<size_t>(type)]; }

void register_device_kernels(c10::DeviceType type, const DeviceKernels* kernels) {
  registry()[static_cast<size_t>(type)] = kernels;
}

void register_ops(torch::Library& m) {
  m.impl("adam_", &adam);
  m.impl("sgd_", &sgd);
  m.impl("adagrad_", &adagrad);
  m.impl("rmsprop_", &rmsprop);
  m.impl("adam_.flat", &adam_flat);
  m.impl("sgd_.flat", &sgd_flat);
  m.impl("adagrad_.flat", &adagrad_flat);
  m.impl("rmsprop_.flat", &rmsprop_flat);
  m.impl("traffic_", &traffic);
  m.impl("classic_sgd_", &classic_sgd);
  m.impl("classic_adagrad_", &classic_adagrad);
  m.impl("classic_rmsprop_", &classic_rmsprop);
  m.impl("classic_adam_", &classic_adam);
}

}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) { fusedopt::register_ops(m); }
