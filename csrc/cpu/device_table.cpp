// The CPU's DeviceKernels: each call runs the kernel of the active
// instruction set over the whole list in one parallel region of torch's
// thread pool.
#include <ATen/Parallel.h>

#include <algorithm>

#include "../device_kernels.h"

namespace fusedopt {
namespace cpu {
namespace {

// Below this many elements per thread, waking another thread costs more than
// it saves.
constexpr int64_t kMinElementsPerSlot = 16384;

template <class Args>
using KernelFn = void (*)(const TensorLists&, const Args&, int64_t, int64_t);

template <class Args, KernelFn<Args> KernelTable::*Fn>
void run(TensorLists& l, const Args& args) {
  const KernelFn<Args> kernel = active_kernels().*Fn;
  const int64_t total = l.offset[l.count];
  if (total == 0) return;
  l.slots = std::clamp<int64_t>(total / kMinElementsPerSlot, 1, at::get_num_threads());
  if (l.slots == 1) {
    kernel(l, args, 0, 1);
  } else {
    at::parallel_for(0, l.slots, 1, [&](int64_t begin, int64_t end) { kernel(l, args, begin, end); });
  }
}

const DeviceKernels kCpuKernels{
    &run<AdamArgs, &KernelTable::adam>,       &run<SgdArgs, &KernelTable::sgd>,
    &run<AdagradArgs, &KernelTable::adagrad>, &run<RmspropArgs, &KernelTable::rmsprop>,
    &run<TrafficArgs, &KernelTable::traffic>, nullptr,
};

const bool kRegistered = (register_device_kernels(c10::DeviceType::CPU, &kCpuKernels), true);

}  // namespace
}  // namespace cpu
}  // namespace fusedopt
