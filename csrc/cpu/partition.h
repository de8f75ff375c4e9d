// Cuts the elements of a whole tensor list into `slots` nearly equal ranges,
// so threads share the work across tensors as well as within them: one
// shared job per step, however many tensors there are. Cut points fall
// on multiples of l.align elements inside a tensor (kAlign, or a quantization
// block), so no two threads write the same cache line or quantization block.
#pragma once

#include <cstdint>

#include "kernel_api.h"

namespace fusedopt {
namespace cpu {

constexpr int64_t kAlign = 64;

// Index of the tensor holding global element g: the last i with offset[i] <= g.
static inline int64_t tensor_at(const TensorLists& l, int64_t g) {
  int64_t lo = 0, hi = l.count;  // offset[lo] <= g < offset[hi] (or hi == count)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (l.offset[mid] <= g) lo = mid; else hi = mid;
  }
  return lo;
}

static inline int64_t slot_start(const TensorLists& l, int64_t slot) {
  const int64_t total = l.offset[l.count];
  if (slot <= 0) return 0;
  if (slot >= l.slots) return total;
  const int64_t g = static_cast<int64_t>((static_cast<__int128>(total) * slot) / l.slots);
  const int64_t t = tensor_at(l, g);
  return l.offset[t] + (g - l.offset[t]) / l.align * l.align;
}

// Calls fn(tensor, begin, end) for each piece of slots [slot_begin, slot_end),
// with begin/end relative to the tensor's first element.
template <class Fn>
static inline void for_each_piece(const TensorLists& l, int64_t slot_begin, int64_t slot_end, Fn&& fn) {
  if (l.count == 0) return;
  int64_t g = slot_start(l, slot_begin);
  const int64_t stop = slot_start(l, slot_end);
  int64_t t = g < stop ? tensor_at(l, g) : l.count;
  for (; g < stop && t < l.count; ++t) {
    const int64_t end = l.offset[t + 1] < stop ? l.offset[t + 1] : stop;
    if (end > g) fn(t, g - l.offset[t], end - l.offset[t]);
    g = end > g ? end : g;
  }
}

}  // namespace cpu
}  // namespace fusedopt
