// The CUDA DeviceKernels, and the registration of the fusedopt ops for CUDA
// tensors (the same implementations as the CPU's, ops_impl.cpp).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kernels.h"
#include "cuda/multi_tensor_apply.cuh"
#include "device_kernels.h"
#include "ops_impl.h"

namespace fusedopt {
namespace cuda {
namespace {

void traffic(cpu::TensorLists& l, const cpu::TrafficArgs& a) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathOf<T>::type;
    with_traffic_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      multi_tensor_apply<T, Update>(l, math::TrafficHyper{0.0}, [&](int64_t) { return Update{}; });
    });
  });
}

constexpr int kStepsPerLaunch = 480;  // within the 4 KiB of kernel arguments

struct StepTable {
  float* steps[kStepsPerLaunch];
  int count;
};

__global__ void increment_steps_kernel(const __grid_constant__ StepTable table, const float* found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  for (int i = threadIdx.x; i < table.count; i += blockDim.x) *table.steps[i] += 1.0f;
}

void increment_steps(float* const* steps, int64_t n, const float* found_inf) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t first = 0; first < n; first += kStepsPerLaunch) {
    StepTable table;
    table.count = static_cast<int>(std::min<int64_t>(n - first, kStepsPerLaunch));
    for (int i = 0; i < table.count; ++i) table.steps[i] = steps[first + i];
    increment_steps_kernel<<<1, 256, 0, stream>>>(table, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

const DeviceKernels kCudaKernels{&adam, &sgd, &adagrad, &rmsprop, &traffic, &increment_steps};
const bool kRegistered = (register_device_kernels(c10::DeviceType::CUDA, &kCudaKernels), true);

}  // namespace
}  // namespace cuda
}  // namespace fusedopt

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) { fusedopt::register_ops(m); }
