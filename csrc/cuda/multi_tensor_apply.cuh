// Multi-tensor apply: one launch updates up to kTensors tensors of a list,
// each cut into chunks of kChunk elements, one chunk per block; a block finds
// its tensor by binary search over the tensors' first blocks, so a launch has
// as many blocks as its tensors need. The per-element update is the functor
// the CPU kernels run (csrc/include/fusedopt/*.h). Its scalars are formed on
// the host and travel in the kernel arguments, or, with device step counts
// (capturable, CUDA graphs), are formed by each block from the step and lr in
// device memory.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <type_traits>

#include "cpu/kernel_api.h"
#include "message.h"

namespace fusedopt {
namespace cuda {

constexpr int kChunk = 65536;
constexpr int kBlock = 512;
constexpr int kArgBytes = 4096;  // the kernel-argument limit every architecture and driver accepts
constexpr int kVectorBytes = 16;

template <typename T>
struct MathOf {
  using type = float;
};
template <>
struct MathOf<double> {
  using type = double;
};

// The launch-wide inputs.
template <class Hyper>
struct LaunchScalars {
  Hyper hyper;
  const float* lr;          // device lr (capturable), or null: hyper.lr
  const float* grad_scale;  // AMP: divide grads by it and store them back
  const float* found_inf;   // AMP: change nothing if it is nonzero
  double reg_weight;        // fusedopt.classic: g = dw + reg_weight * dr
};

// One launch's tensors: N of them, each with its streams, functor, step
// pointer and first block.
template <class Update, int States, int N>
struct TensorTableOf {
  static constexpr int kTensors = N;
  void* grads[N];
  const void* reg_grads[N];
  void* states[States][N];
  int64_t numel[N];
  Update updates[N];      // host-formed functors
  const float* steps[N];  // device step counts, or null: use updates[]
  int32_t first_block[N + 1];
  int32_t count;
};

// The most tensors whose table fits beside the launch scalars. Counting each
// tensor's own bytes and the two int32 of the table gives an upper bound;
// padding can cost one tensor less.
template <class Update, int States>
constexpr int max_tensors() {
  constexpr int scalars = sizeof(LaunchScalars<typename Update::Hyper>);
  constexpr int per_tensor =
      (2 + States) * sizeof(void*) + sizeof(int64_t) + sizeof(Update) + sizeof(void*) + sizeof(int32_t);
  constexpr int most = (kArgBytes - scalars - 2 * sizeof(int32_t)) / per_tensor;
  return sizeof(TensorTableOf<Update, States, most>) + scalars <= kArgBytes ? most : most - 1;
}

template <class Update, int States>
using TensorTable = TensorTableOf<Update, States, max_tensors<Update, States>()>;

template <typename T, int V>
struct alignas(kVectorBytes) Pack {
  T v[V];
};

// The tensor of this block: the last whose first block is at or before it.
__device__ __forceinline__ int tensor_of_block(const int32_t* first_block, int count) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first_block[mid] <= static_cast<int32_t>(blockIdx.x)) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Tensor t's functor: formed on the device from its step count and lr where
// those live there (capturable), else the one the host formed.
template <class Update, class Table, class Scalars>
__device__ __forceinline__ Update update_of(const Table& table, const Scalars& sc, int t) {
  if (table.steps[t] == nullptr) return table.updates[t];
  typename Update::Hyper h = sc.hyper;
  if (sc.lr != nullptr) h.lr = *sc.lr;
  return Update::at_step(h, *table.steps[t]);
}

template <typename T, class Update, int K>
__global__ void __launch_bounds__(kBlock)
    multi_tensor_kernel(const __grid_constant__ TensorTable<Update, K> table,
                        const __grid_constant__ LaunchScalars<typename Update::Hyper> sc) {
  using M = typename MathOf<T>::type;
  if (sc.found_inf != nullptr && *sc.found_inf != 0.0f) return;
  const int t = tensor_of_block(table.first_block, table.count);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - table.first_block[t]) * kChunk;
  const int64_t n = min(table.numel[t] - begin, static_cast<int64_t>(kChunk));

  const Update update = update_of<Update>(table, sc, t);
  T* grad = static_cast<T*>(table.grads[t]) + begin;
  const T* reg = table.reg_grads[t] != nullptr ? static_cast<const T*>(table.reg_grads[t]) + begin : nullptr;
  T* state[K];
#pragma unroll
  for (int k = 0; k < K; ++k) state[k] = static_cast<T*>(table.states[k][t]) + begin;
  const bool scaled = sc.grad_scale != nullptr;
  const M scale = scaled ? static_cast<M>(*sc.grad_scale) : M(1);
  const M reg_weight = static_cast<M>(sc.reg_weight);

  // The gradient of element i from its loaded value(s).
  const auto gradient = [&](T g_raw, T r_raw, M& out) {
    M g = static_cast<M>(g_raw);
    if (reg != nullptr) g = math::regularized_grad<M>(g, static_cast<M>(r_raw), reg_weight);
    if (scaled) g = g / scale;
    out = g;
  };

  // Aligned fast path: every stream moved 16 bytes per access.
  constexpr int V = kVectorBytes / sizeof(T);
  using P = Pack<T, V>;
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; };
  bool vectorized = aligned(grad) && (reg == nullptr || aligned(reg));
#pragma unroll
  for (int k = 0; k < K; ++k) vectorized = vectorized && aligned(state[k]);
  int64_t done = 0;
  if (vectorized) {
    const int64_t packs = n / V;
    for (int64_t v = threadIdx.x; v < packs; v += blockDim.x) {
      P g = reinterpret_cast<const P*>(grad)[v];
      P r;
      if (reg != nullptr) r = reinterpret_cast<const P*>(reg)[v];
      P s[K];
#pragma unroll
      for (int k = 0; k < K; ++k) s[k] = reinterpret_cast<const P*>(state[k])[v];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        M gj;
        gradient(g.v[j], reg != nullptr ? r.v[j] : T(0), gj);
        if (scaled) g.v[j] = static_cast<T>(gj);
        M m[K];
#pragma unroll
        for (int k = 0; k < K; ++k) m[k] = static_cast<M>(s[k].v[j]);
        update(gj, m);
#pragma unroll
        for (int k = 0; k < K; ++k) s[k].v[j] = static_cast<T>(m[k]);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) reinterpret_cast<P*>(state[k])[v] = s[k];
      if (scaled) reinterpret_cast<P*>(grad)[v] = g;
    }
    done = packs * V;
  }
  // The general path: the tail, or a tensor that is not 16-byte aligned.
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    M g;
    gradient(grad[i], reg != nullptr ? reg[i] : T(0), g);
    if (scaled) grad[i] = static_cast<T>(g);
    M m[K];
#pragma unroll
    for (int k = 0; k < K; ++k) m[k] = static_cast<M>(state[k][i]);
    update(g, m);
#pragma unroll
    for (int k = 0; k < K; ++k) state[k][i] = static_cast<T>(m[k]);
  }
}

// Fills tables of tensors [0, l.count) and launches each, a chunk per block:
// a table holds at most Table::kTensors tensors and 2^31 blocks. The fields
// every table has are filled here (numel, steps, updates, first_block);
// fill(table, i, t) adds the kernel's own (its streams) for tensor t in row
// i, and launch(table, blocks) launches a full table. make_update(t) forms
// tensor t's functor on the host (not called when the steps live on the
// device). Tensors with no elements are skipped.
template <class Table, class Update, class MakeUpdate, class Fill, class Launch>
void launch_tables(const cpu::TensorLists& l, MakeUpdate&& make_update, Fill&& fill, Launch&& launch) {
  static_assert(Table::kTensors >= 8, "too few tensors per launch");
  Table table;
  table.count = 0;
  int64_t blocks = 0;
  const auto flush = [&] {
    if (table.count > 0) {
      table.first_block[table.count] = static_cast<int32_t>(blocks);
      launch(table, blocks);
    }
    table.count = 0;
    blocks = 0;
  };
  for (int64_t t = 0; t < l.count; ++t) {
    const int64_t numel = l.offset[t + 1] - l.offset[t];
    if (numel == 0) continue;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    FUSEDOPT_CHECK(chunks < (int64_t{1} << 30), "fusedopt: a tensor of ", numel, " elements is too large");
    if (blocks + chunks >= (int64_t{1} << 31) - 1) flush();
    const int i = table.count++;
    fill(table, i, t);
    table.numel[i] = numel;
    table.steps[i] = l.device_steps != nullptr ? l.device_steps[t] : nullptr;
    table.updates[i] = l.device_steps != nullptr ? Update{} : make_update(t);
    table.first_block[i] = static_cast<int32_t>(blocks);
    blocks += chunks;
    if (table.count == Table::kTensors) flush();
  }
  flush();
}

// Launches Update over tensors [0, l.count) of plain storage (every stream in
// T) on the current stream.
template <typename T, class Update, class MakeUpdate>
void plain_apply(const cpu::TensorLists& l, const typename Update::Hyper& hyper, MakeUpdate&& make_update) {
  constexpr int K = Update::kStates;
  using Table = TensorTable<Update, K>;
  static_assert(sizeof(Table) + sizeof(LaunchScalars<typename Update::Hyper>) <= kArgBytes,
                "kernel arguments over 4 KiB");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const LaunchScalars<typename Update::Hyper> sc{hyper, l.device_lr, l.grad_scale, l.found_inf, l.reg_weight};
  launch_tables<Table, Update>(
      l, make_update,
      [&](Table& table, int i, int64_t t) {
        table.grads[i] = const_cast<void*>(l.grads[t]);  // written only with a grad_scale (grads are then `!`)
        table.reg_grads[i] = l.reg_grads != nullptr ? l.reg_grads[t] : nullptr;
        for (int k = 0; k < K; ++k) table.states[k][i] = l.states[k][t];
      },
      [&](const Table& table, int64_t blocks) {
        multi_tensor_kernel<T, Update, K><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(table, sc);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace cuda
}  // namespace fusedopt

// multi_tensor_apply, which picks plain_apply or precision_apply.
#include "cuda/precision_apply.cuh"
