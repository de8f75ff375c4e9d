// The boundary between the ATen glue (csrc/ops_impl.cpp) and the kernels: the
// CPU kernels, compiled once per instruction set, which never see a torch
// header, and the CUDA kernels (csrc/cuda/).
#pragma once

#include <cstdint>

#include "fusedopt/adagrad.h"
#include "fusedopt/adam.h"
#include "fusedopt/rmsprop.h"
#include "fusedopt/quantize.h"
#include "fusedopt/rounding.h"
#include "fusedopt/sgd.h"
#include "fusedopt/traffic.h"

namespace fusedopt {
namespace cpu {

// kQuant8: blockwise 8-bit states (fusedopt/quantize.h), each a uint8 tensor
// of codes and block absmaxes.
enum class Dtype : int { kFloat32, kFloat64, kBFloat16, kFloat16, kQuant8 };

// How an 8-bit state slot is coded: signed (momentum, m) or non-negative (v).
enum class Quant : uint8_t { kNone, kSigned, kUnsigned };

constexpr int kMaxStates = 4;

// How a 16-bit param is kept between steps (fusedopt's `param_precision`).
enum class ParamStorage : int {
  kPlain,        // the param itself, rounded to nearest or stochastically
  kCompensated,  // param + a bfloat16 residual of what rounding dropped (companions)
  kMaster,       // a float32 master in states[0]; the 16-bit param (companions) rounded from it
};

// Where element i of a tensor sits in the whole tensor (a DTensor's local
// shard is a block of rows of it): base + (i / row_local) * row_global +
// i % row_local. Stochastic rounding draws its bits by that index, so a
// sharded step rounds as the unsharded one.
struct IndexMap {
  int64_t base, row_local, row_global;
};

// Low-precision storage of a call's tensors; the default is torch's: every
// state in the params' dtype, every 16-bit value rounded to nearest.
struct Storage {
  Dtype state_dtype = Dtype::kFloat32;  // states[1..]: the params' dtype, bfloat16, float32 or kQuant8
  Quant quant[kMaxStates] = {};         // kQuant8: the code of each state slot (1..)
  ParamStorage param = ParamStorage::kPlain;
  bool param_stochastic = false;  // kPlain 16-bit params: stochastic rounding
  bool state_stochastic = false;  // 16-bit states: stochastic rounding
  void* const* companions = nullptr;  // per tensor: kCompensated's residuals, kMaster's 16-bit params
  const uint64_t* keys = nullptr;     // per tensor: math::stream_key of the param stream at this step
  const IndexMap* index = nullptr;    // per tensor, or null: the local index is the global one
  bool plain(Dtype dtype) const {
    return state_dtype == dtype && param == ParamStorage::kPlain && !param_stochastic && !state_stochastic;
  }
};

// Equal-length lists of same-shaped tensors, each walked as one dense run of
// `numel[i]` elements. states[0] holds the params; the others the optimizer
// state, in the slot order of the algorithm's update functor.
struct TensorLists {
  int64_t count = 0;
  Dtype dtype = Dtype::kFloat32;
  const int64_t* offset = nullptr;  // count + 1 prefix sums of numel
  const void* const* grads = nullptr;
  void* const* states[kMaxStates] = {};
  // fusedopt.classic: when set, the gradient is grads + reg_weight * reg_grads.
  const void* const* reg_grads = nullptr;
  double reg_weight = 0.0;
  // The work is cut into `slots` nearly equal element ranges across the whole
  // list; a kernel call handles slots [slot_begin, slot_end). Cuts inside a
  // tensor fall on multiples of `align` elements (8-bit states: a block).
  int64_t slots = 1;
  int64_t align = 64;
  // AMP (torch.amp.GradScaler): when set, every gradient is divided by
  // *grad_scale and stored back unscaled, as torch's fused optimizers do.
  // Memory of the kernels' device.
  const float* grad_scale = nullptr;
  // CUDA only, so a step can be captured in a CUDA graph: when set, the step
  // counts (already incremented) and lr are read on the device instead of
  // the host-formed per-tensor scalars, and nothing changes if *found_inf.
  const float* const* device_steps = nullptr;
  const float* device_lr = nullptr;
  const float* found_inf = nullptr;
  Storage storage;
};

struct AdamArgs {
  math::AdamHyper hyper;
  math::Decay decay;
  bool amsgrad, maximize;
  const math::AdamStep<double>* step;  // per tensor
};

struct SgdArgs {
  math::SgdHyper hyper;
  math::Momentum momentum;
  bool weight_decay, maximize;
  const uint8_t* first_step;  // per tensor: the momentum buffer is new
};

struct AdagradArgs {
  math::AdagradHyper hyper;
  bool weight_decay, maximize;
  const double* neg_clr;  // per tensor
};

struct RmspropArgs {
  math::RmspropHyper hyper;
  bool weight_decay, maximize, centered, momentum;
  bool seed_form = false;  // fusedopt.classic: eps inside the root, velocity momentum
};

struct TrafficArgs {
  int states;  // 1 to kMaxStates streams besides the gradient
};

struct KernelTable {
  const char* isa;
  void (*adam)(const TensorLists&, const AdamArgs&, int64_t slot_begin, int64_t slot_end);
  void (*sgd)(const TensorLists&, const SgdArgs&, int64_t slot_begin, int64_t slot_end);
  void (*adagrad)(const TensorLists&, const AdagradArgs&, int64_t slot_begin, int64_t slot_end);
  void (*rmsprop)(const TensorLists&, const RmspropArgs&, int64_t slot_begin, int64_t slot_end);
  void (*traffic)(const TensorLists&, const TrafficArgs&, int64_t slot_begin, int64_t slot_end);
};

// One table per instruction set this build holds (kernels_<isa>.cpp).
const KernelTable& kernels_baseline();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512bf16();

// The table in use: the best the CPU supports, or the one named by
// set_kernel_isa / the FUSEDOPT_CPU_ISA environment variable.
const KernelTable& active_kernels();
// Names the ISA to use ("baseline", "avx2", "avx512", "avx512bf16" or "auto"); returns
// false if the name is unknown or this CPU cannot run it.
bool set_kernel_isa(const char* name);
// The ISAs this CPU can run, best first, comma separated.
const char* supported_isas();

}  // namespace cpu
}  // namespace fusedopt
