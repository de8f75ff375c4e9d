// Checks the tensor lists an op receives and lays them out as plain pointers
// (fusedopt::cpu::TensorLists) for a kernel that walks each tensor as one
// dense run. Device-independent: the CPU and CUDA glue both use it.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
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

// What a call stores in other dtypes than its params' (fusedopt's
// low-precision modes; the defaults are torch's).
struct ListDtypes {
  std::optional<at::ScalarType> grads;   // default: the params'
  std::optional<at::ScalarType> states;  // default: the params'; uint8: blockwise 8-bit (packed, see below)
  // A list written beside the params (cpu::Storage::companions): the
  // residuals of compensated params, or the 16-bit params of float32 masters.
  NamedList companion{"companions", {}, false};
  std::optional<at::ScalarType> companion_dtype;
};

class PreparedLists {
 public:
  // states: the optimizer states in the slot order of the algorithm's update
  // functor; those not `used` are skipped. Every tensor must be on `device`,
  // share the params' shape and dtype (or the dtype `dtypes` names for its
  // list), be strided, and share no memory with the other operands of its
  // param. An 8-bit state (dtypes.states uint8) is instead one contiguous
  // uint8 tensor of math::quant_blocks(numel) * math::kQuantBlockBytes bytes
  // (codes, then block absmaxes). A tensor whose operands are not dense with one common layout is
  // walked through contiguous copies that finish() writes back, so no update
  // is lost. reg_grads (fusedopt.classic's dr), when not empty, is a second
  // read-only list checked like grads. grads_mutable: the kernel writes the
  // grads (AMP stores them unscaled), so they are checked and written back
  // like states.
  PreparedLists(const char* op, c10::DeviceType device, at::TensorList params, at::TensorList grads,
                std::initializer_list<NamedList> states, at::TensorList reg_grads = {},
                bool grads_mutable = false, const ListDtypes& dtypes = {});

  cpu::TensorLists& lists() { return lists_; }
  int64_t size() const { return lists_.count; }
  // Writes results held in contiguous copies back to the caller's tensors.
  void finish();

 private:
  // One list of the call: its tensors, the dtype they must have (none: the
  // param's), whether the kernel writes them.
  struct Operand {
    const char* name;
    at::TensorList tensors;
    std::optional<at::ScalarType> dtype;
    bool mutated;
    bool packed = false;  // an 8-bit state: bytes of codes and absmaxes, not the param's shape
  };
  static constexpr int kMaxOperands = cpu::kMaxStates + 3;  // + grads, reg_grads, companion

  bool dense(size_t i) const;
  void prepare_slowly(const char* op, c10::DeviceType device, size_t i);

  c10::DeviceType device_ = c10::DeviceType::CPU;
  caffe2::TypeMeta first_dtype_;
  std::vector<Operand> operands_;  // params, grads, [reg_grads], states..., [companion]
  bool has_reg_ = false;
  std::vector<at::Tensor> copies_;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;  // (original, copy)
  std::vector<int64_t> offset_;
  std::vector<void*> pointers_[kMaxOperands];
  cpu::TensorLists lists_;
};

// A state list, or the step counts (`scalars`), given as one flat tensor (the
// ops' `.flat` overloads): the per-param tensors it concatenates, as aliases
// of its memory with each param's shape (a one-element tensor per param for
// step counts). None gives an empty list. The flat tensor must be contiguous,
// 1-d and of exactly the params' total size; the params contiguous. The
// aliases are made without the dispatcher (thousands per compiled step) and
// never leave the op.
std::vector<at::Tensor> unflatten(const char* op, const char* name, const std::optional<at::Tensor>& flat,
                                  at::TensorList params, bool scalars = false);

// Adds one to every `step` tensor (float32 or float64 scalars on the CPU, as
// torch.optim keeps them) and returns the new values. device: that of the
// step's params; only a CPU step shares this work with helper threads.
std::vector<double> increment_steps(const char* op, at::TensorList steps, size_t expected,
                                    c10::DeviceType device);

}  // namespace fusedopt
