// What a device contributes to the fusedopt ops: one function per algorithm
// over prepared tensor lists. The op glue (ops_impl.cpp) is written once and
// picks the table of the params' device; the CPU table runs the kernels of
// the active instruction set on fusedopt's host threads (cpu/device_table.cpp),
// the CUDA table launches multi-tensor kernels (cuda/).
#pragma once

#include <c10/core/DeviceType.h>

#include "cpu/kernel_api.h"

namespace fusedopt {

struct DeviceKernels {
  void (*adam)(cpu::TensorLists&, const cpu::AdamArgs&);
  void (*sgd)(cpu::TensorLists&, const cpu::SgdArgs&);
  void (*adagrad)(cpu::TensorLists&, const cpu::AdagradArgs&);
  void (*rmsprop)(cpu::TensorLists&, const cpu::RmspropArgs&);
  void (*traffic)(cpu::TensorLists&, const cpu::TrafficArgs&);
  // Adds 1 to each of n float32 step counts in device memory, unless
  // *found_inf (when given) is nonzero. Null where steps live on the host.
  void (*increment_steps)(float* const* steps, int64_t n, const float* found_inf);
};

// The table of a device type, or nullptr if this build has none.
const DeviceKernels* device_kernels(c10::DeviceType type);
// Called once by each device's table at load time.
void register_device_kernels(c10::DeviceType type, const DeviceKernels* kernels);

}  // namespace fusedopt
