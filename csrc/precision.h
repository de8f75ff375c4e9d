// The low-precision inputs of the torch-style ops (see STEP_INPUTS in ops.cpp):
// checked once, turned into the PreparedLists a call needs (in master mode
// the float32 masters are what the kernel updates, the 16-bit params are
// written beside them) and into cpu::Storage, with stochastic rounding's
// per-tensor keys once the step counts are known.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <initializer_list>
#include <optional>
#include <vector>

#include "tensor_lists.h"

namespace fusedopt {

class Precision {
 public:
  Precision(const char* op, c10::string_view param_precision, std::optional<at::ScalarType> state_dtype,
            bool stochastic_states, int64_t seed, at::IntArrayRef rng_ids, at::IntArrayRef index_map,
            at::TensorList companions);

  // The lists of a call: params (or the masters), grads, states, and the companion list.
  PreparedLists prepare(const char* op, c10::DeviceType device, at::TensorList params, at::TensorList grads,
                        std::initializer_list<NamedList> states, bool grads_mutable) const;

  // The code of each used state slot, in slot order, for 8-bit states
  // (signed for momentum-like states, unsigned for squares and sums).
  static void quant_slots(PreparedLists& prepared, std::initializer_list<cpu::Quant> slots);

  // Fills the lists' storage; host_steps: each tensor's step count after this
  // step's increment (stochastic rounding keys its bits by it).
  void apply(const char* op, PreparedLists& prepared, const std::vector<double>& host_steps, bool device_steps);

 private:
  cpu::ParamStorage param_ = cpu::ParamStorage::kPlain;
  bool param_stochastic_ = false;
  std::optional<at::ScalarType> state_dtype_;
  bool state_stochastic_ = false;
  int64_t seed_;
  at::IntArrayRef rng_ids_, index_map_;
  at::TensorList companions_;
  std::vector<uint64_t> keys_;
  std::vector<cpu::IndexMap> index_;
};

}  // namespace fusedopt
