// The fusedopt ops' implementations, written once for every device: each
// checks its lists, counts steps, wires AMP and CUDA-graph inputs and calls
// the DeviceKernels of the params' device (device_kernels.h).
#pragma once

#include <torch/library.h>

namespace fusedopt {

// Registers every op of TORCH_LIBRARY(fusedopt) under the library's dispatch
// key (TORCH_LIBRARY_IMPL(fusedopt, CPU / CUDA, m) { register_ops(m); }).
void register_ops(torch::Library& m);

}  // namespace fusedopt
