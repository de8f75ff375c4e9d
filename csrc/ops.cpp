// The fusedopt op schemas. Each op updates whole lists of tensors in place
// (the `!` annotations); the implementations (ops_impl.cpp) are registered
// for the CPU there and for CUDA in cuda/, the fake implementations for torch.compile live in
// fusedopt/_ops.py, and the Python module is defined in cached_step.cpp.
#include <torch/library.h>

#include <string>

#include "cpu/kernel_api.h"
#include "cpu/slot_pool.h"
#include "message.h"

namespace {

std::string cpu_isa() { return fusedopt::cpu::active_kernels().isa; }

std::string cpu_isas_supported() { return fusedopt::cpu::supported_isas(); }

// For tests and benchmarks: run the kernels built for a lower ISA.
std::string set_cpu_isa(std::string name) {
  FUSEDOPT_CHECK(fusedopt::cpu::set_kernel_isa(name.c_str()), "fusedopt: unknown or unsupported CPU ISA '",
              name, "'; this CPU supports ", fusedopt::cpu::supported_isas());
  return cpu_isa();
}

// For tests: how many host loops so far shared their work with fusedopt's
// helper threads.
int64_t cpu_helped_runs() { return fusedopt::cpu::helped_runs(); }

}  // namespace

// The torch-style ops' trailing inputs. lr_tensor, when given, replaces lr
// (read on the device when the steps live there: capturable). grad_scale and
// found_inf are what torch.amp.GradScaler hands an optimizer: grads are
// divided by grad_scale in the kernel and written back unscaled (hence the
// grads' `!`), and nothing changes, step counts included, if found_inf != 0.
// sgd_'s state_steps are only kept for stochastic rounding's keys (empty otherwise).
//
// Low precision (fusedopt's param_precision / state_dtype / stochastic_states;
// the defaults are torch's): param_precision is "nearest", "stochastic"
// (16-bit params rounded stochastically), "compensated" (companions, the
// list before the `*`: a bfloat16 residual per param) or "master"
// (companions: float32 masters, the params written from them; empty otherwise). state_dtype: the states' dtype when not the
// params' (bfloat16; float32 beside masters). Stochastic rounding draws its
// bits from (seed, rng_ids[i], the tensor's step, the element's index in the
// whole tensor: index_map holds (base, row_local, row_global) per tensor for
// DTensor shards, see cpu::IndexMap).
#define STEP_INPUTS                                                                                        \
  "Tensor? lr_tensor=None, Tensor? grad_scale=None, Tensor? found_inf=None, "                              \
  "str param_precision=\"nearest\", ScalarType? state_dtype=None, bool stochastic_states=False, int seed=0, " \
  "int[] rng_ids=[], int[] index_map=[]) -> ()"

// The `.flat` overloads are the steps of a compiled graph (fusedopt/optimizer.py,
// _flatten_states): each state list and the step counts come as ONE contiguous
// 1-d tensor, the concatenation of the per-param tensors in order (a state
// absent for the options given: None), and the grads are read only (no AMP
// inputs). Every tensor an op mutates costs torch.compile's passes time in
// proportion to the op's arguments, so a graph holding thousands of state
// tensors compiled about three times slower than one holding a few buffers.
#define FLAT_STEP_INPUTS                                                                                   \
  "Tensor? lr_tensor=None, "                                                                               \
  "str param_precision=\"nearest\", ScalarType? state_dtype=None, bool stochastic_states=False, int seed=0, " \
  "int[] rng_ids=[], int[] index_map=[]) -> ()"

TORCH_LIBRARY(fusedopt, m) {
  m.def(
      "adam_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, Tensor(g!)[] companions, *, float lr, float beta1, float beta2, "
      "float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, " STEP_INPUTS);
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor(c!)[] grads, Tensor(b!)[] momentum_buffers, Tensor(d!)[] state_steps, "
      "Tensor(e!)[] companions, *, float lr, "
      "float weight_decay, float momentum, float dampening, bool nesterov, bool maximize, "
      "int[] first_step, " STEP_INPUTS);
  m.def(
      "adagrad_(Tensor(a!)[] params, Tensor(d!)[] grads, Tensor(b!)[] state_sums, Tensor(c!)[] state_steps, "
      "Tensor(e!)[] companions, *, float lr, float lr_decay, float weight_decay, float eps, bool maximize, " STEP_INPUTS);
  m.def(
      "rmsprop_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] square_avgs, "
      "Tensor(c!)[] momentum_buffers, Tensor(d!)[] grad_avgs, Tensor(e!)[] state_steps, Tensor(g!)[] companions, "
      "*, float lr, "
      "float alpha, float eps, float weight_decay, float momentum, bool centered, bool maximize, " STEP_INPUTS);
  m.def(
      "adam_.flat(Tensor(a!)[] params, Tensor[] grads, Tensor(b!) exp_avgs, Tensor(c!) exp_avg_sqs, "
      "Tensor(d!)? max_exp_avg_sqs, Tensor(e!) state_steps, Tensor(g!)[] companions, *, float lr, float beta1, "
      "float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
      FLAT_STEP_INPUTS);
  m.def(
      "sgd_.flat(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)? momentum_buffers, Tensor(d!)? state_steps, "
      "Tensor(e!)[] companions, *, float lr, float weight_decay, float momentum, float dampening, bool nesterov, "
      "bool maximize, int[] first_step, " FLAT_STEP_INPUTS);
  m.def(
      "adagrad_.flat(Tensor(a!)[] params, Tensor[] grads, Tensor(b!) state_sums, Tensor(c!) state_steps, "
      "Tensor(e!)[] companions, *, float lr, float lr_decay, float weight_decay, float eps, bool maximize, "
      FLAT_STEP_INPUTS);
  m.def(
      "rmsprop_.flat(Tensor(a!)[] params, Tensor[] grads, Tensor(b!) square_avgs, Tensor(c!)? momentum_buffers, "
      "Tensor(d!)? grad_avgs, Tensor(e!) state_steps, Tensor(g!)[] companions, *, float lr, float alpha, "
      "float eps, float weight_decay, float momentum, bool centered, bool maximize, " FLAT_STEP_INPUTS);
  // fusedopt.classic, the seed document's update(w, alpha, dw, dr, lambdaa):
  // g = dw + lambdaa * dr (drs may be empty: g = dw). Empty velocities mean
  // no momentum.
  m.def(
      "classic_sgd_(Tensor(a!)[] ws, Tensor[] dws, Tensor[] drs, Tensor(b!)[] velocities, *, float alpha, "
      "float lambdaa, float epsilon, bool nesterov) -> ()");
  m.def(
      "classic_adagrad_(Tensor(a!)[] ws, Tensor[] dws, Tensor[] drs, Tensor(b!)[] rs, *, float alpha, "
      "float lambdaa, float delta) -> ()");
  m.def(
      "classic_rmsprop_(Tensor(a!)[] ws, Tensor[] dws, Tensor[] drs, Tensor(b!)[] rs, Tensor(c!)[] velocities, "
      "*, float alpha, float lambdaa, float rho, float delta, float epsilon) -> ()");
  m.def(
      "classic_adam_(Tensor(a!)[] ws, Tensor[] dws, Tensor[] drs, Tensor(b!)[] ss, Tensor(c!)[] rs, "
      "Tensor(d!)[] steps, *, float alpha, float lambdaa, float rho1, float rho2, float delta) -> ()");
  // The memory traffic of a step with trivial arithmetic (a benchmark yardstick):
  // each non-empty list is read and written once, grads read once.
  m.def(
      "traffic_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] states1, Tensor(c!)[] states2, "
      "Tensor(d!)[] states3) -> ()");
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("cpu_isas_supported() -> str", &cpu_isas_supported);
  m.def("set_cpu_isa(str name) -> str", &set_cpu_isa);
  m.def("cpu_helped_runs() -> int", &cpu_helped_runs);
}

// The ops only mutate tensors and return nothing, and optimizers call them
// under no_grad: there is nothing for autograd to record. Falling through
// the Autograd key also spares every call the boxed autograd fallback, which
// would convert each tensor of every list to an IValue and back.
TORCH_LIBRARY_IMPL(fusedopt, Autograd, m) {
  for (const char* name : {"adam_", "sgd_", "adagrad_", "rmsprop_", "adam_.flat", "sgd_.flat", "adagrad_.flat",
                           "rmsprop_.flat", "traffic_", "classic_sgd_", "classic_adagrad_", "classic_rmsprop_",
                           "classic_adam_"}) {
    m.impl(name, torch::CppFunction::makeFallthrough());
  }
}
