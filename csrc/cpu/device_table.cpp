// The CPU's DeviceKernels: each call runs the kernel of the active
// instruction set over the whole list, cut into slots that the calling thread
// and fusedopt's helper threads claim (cpu/slot_pool.h).

#include <algorithm>

#include "../device_kernels.h"
#include "slot_pool.h"

namespace fusedopt {
namespace cpu {
namespace {

// Waking a sleeping helper costs the caller a futex wake, a system call that
// reaches the other vCPU through the hypervisor: 6 us on the busy 2-core EPYC
// VM, 10-11 us when it is idle, and the helper starts 3-8 us after that
// (2026-11-28). Measured there, Adam on one tensor, shared against alone,
// float32 (16 bytes of streams per element): back to back (the helper still
// awake) 2 MB 46-76 against 65-67 us, 4 MB 67-70 against 101-110 us; 2 ms
// apart (the helper asleep, as between training steps) 1-4 MB about equal,
// 16 MB 418-594 against 572-669 us. Below 4 MB a call runs on the caller:
// there the gain is small or nothing, and on a busy host where the helper
// gets no core the wake is a loss of about 10 us.
constexpr int64_t kParallelBytes = 4 << 20;
// A slot is about 3-5 us of work: the caller waits at most about that long for
// a helper's last slot when the helper is running, and per-slot costs (a
// claim, the kernel's dispatch, two binary searches) stay under 1%. Slots are
// fixed by the data, never by the thread count, so the cuts (and the bits)
// are the same for any number of threads.
constexpr int64_t kSlotBytes = 128 << 10;
constexpr int64_t kMaxSlotsPerCall = 4096;

int64_t element_bytes(Dtype d) {
  switch (d) {
    case Dtype::kFloat64: return 8;
    case Dtype::kBFloat16:
    case Dtype::kFloat16: return 2;
    case Dtype::kQuant8: return 1;
    case Dtype::kFloat32: break;
  }
  return 4;
}

// Bytes of the step's streams per element, each list counted once.
int64_t bytes_per_element(const TensorLists& l) {
  int64_t bytes = element_bytes(l.dtype) * (l.reg_grads != nullptr ? 3 : 2);  // params, grads, [reg_grads]
  for (int k = 1; k < kMaxStates; ++k) {
    if (l.states[k] != nullptr) bytes += element_bytes(l.storage.state_dtype);
  }
  if (l.storage.companions != nullptr) bytes += 2;
  return bytes;
}

template <class Args>
using KernelFn = void (*)(const TensorLists&, const Args&, int64_t, int64_t);

template <class Args, KernelFn<Args> KernelTable::*Fn>
void run(TensorLists& l, const Args& args) {
  const KernelFn<Args> kernel = active_kernels().*Fn;
  const int64_t total = l.offset[l.count];
  if (total == 0) return;
  const int64_t bytes = total * bytes_per_element(l);
  l.slots = std::clamp<int64_t>(bytes / kSlotBytes, 1, kMaxSlotsPerCall);
  const int threads = host_threads();
  if (threads < 2 || bytes < kParallelBytes) {
    kernel(l, args, 0, l.slots);
    return;
  }
  auto slot = [&](int64_t s) { kernel(l, args, s, s + 1); };
  run_slots(l.slots, threads - 1, slot);
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
