// Checks the tensor lists an op receives and lays them out as plain pointers
// (fusedopt::cpu::TensorLists) for a kernel that walks each tensor as one
// dense run. Device-independent: the CPU and CUDA glue both use it.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "cpu/kernel_api.h"

namespace fusedopt {

struct NamedList {
  const char* name;
  at::TensorList tensors;
  // Whether the options of the call read this list. A used list must hold one
  // tensor per param (an empty one is an error, never a skipped state); an
  // unused one is ignored, whatever it holds.
  bool used = true;
};

class PreparedLists {
 public:
  // states: the optimizer states in the slot order of the algorithm's update
  // functor; those not `used` are skipped. Every tensor must be on `device`,
  // share the params' dtype and shape, be strided, and share no memory with
  // the other operands of its param. A tensor whose operands are
  // not dense with one common layout is walked through contiguous copies
  // that finish() writes back, so no update is lost.
  // reg_grads (fusedopt.classic's dr), when not empty, is a second read-only
  // list checked like grads. grads_mutable: the kernel writes the grads
  // (AMP stores them unscaled), so they are checked and written back like states.
  PreparedLists(const char* op, c10::DeviceType device, at::TensorList params, at::TensorList grads,
                std::initializer_list<NamedList> states, at::TensorList reg_grads = {},
                bool grads_mutable = false);

  cpu::TensorLists& lists() { return lists_; }
  int64_t size() const { return lists_.count; }
  // Writes results held in contiguous copies back to the caller's tensors.
  void finish();

 private:
  bool dense_like_param(const at::Tensor& param, const std::vector<NamedList>& inputs,
                        const std::vector<NamedList>& used, size_t i) const;
  void prepare_slowly(const char* op, c10::DeviceType device, at::TensorList params,
                      const std::vector<NamedList>& inputs, const std::vector<NamedList>& used, size_t i);

  c10::DeviceType device_ = c10::DeviceType::CPU;
  bool grads_mutable_ = false;
  caffe2::TypeMeta first_dtype_;
  std::vector<at::Tensor> copies_;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;  // (original, copy)
  std::vector<int64_t> offset_;
  std::vector<const void*> inputs_[2];  // grads, reg_grads
  std::vector<void*> states_[cpu::kMaxStates];
  cpu::TensorLists lists_;
};

// Adds one to every `step` tensor (float32 or float64 scalars on the CPU, as
// torch.optim keeps them) and returns the new values.
std::vector<double> increment_steps(const char* op, at::TensorList steps, size_t expected);

}  // namespace fusedopt
