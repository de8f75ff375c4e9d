// Runs a CPU kernel over prepared tensor lists in one parallel region of
// torch's thread pool, then writes back any contiguous copies.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>

#include "kernel_api.h"
#include "../tensor_lists.h"

namespace fusedopt {
namespace cpu {

// Below this many elements per thread, waking another thread costs more than
// it saves.
constexpr int64_t kMinElementsPerSlot = 16384;

template <class Args>
using KernelFn = void (*)(const TensorLists&, const Args&, int64_t, int64_t);

template <class Args>
inline void run(PreparedLists& prepared, KernelFn<Args> kernel, const Args& args) {
  TensorLists& l = prepared.lists();
  const int64_t total = l.offset[l.count];
  if (total == 0) return prepared.finish();
  l.slots = std::clamp<int64_t>(total / kMinElementsPerSlot, 1, at::get_num_threads());
  if (l.slots == 1) {
    kernel(l, args, 0, 1);
  } else {
    at::parallel_for(0, l.slots, 1, [&](int64_t begin, int64_t end) { kernel(l, args, begin, end); });
  }
  prepared.finish();
}

}  // namespace cpu
}  // namespace fusedopt
