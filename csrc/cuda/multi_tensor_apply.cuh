// Multi-tensor apply: one launch updates up to kMaxTensors tensors of a list,
// cut into chunks of kChunk elements, one chunk per block. The per-tensor
// update functor (the same one the CPU loop runs, from
// csrc/include/fusedopt/*.h) travels by value in the kernel arguments, so the
// per-step scalars formed on the host reach every thread without a copy.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

#include "cpu/kernel_api.h"

namespace fusedopt {
namespace cuda {

constexpr int kChunk = 65536;
constexpr int kBlock = 512;
constexpr int kIlp = 4;  // elements in flight per thread
constexpr int kMaxBlocks = 320;
constexpr int kArgBytes = 4096;  // the kernel-argument limit of every architecture

// As many tensors per launch as fit in the argument limit beside the block table.
template <class Update, int States>
constexpr int max_tensors() {
  const int per_tensor = 3 * sizeof(void*) + States * sizeof(void*) + sizeof(Update);
  const int n = (kArgBytes - 64 - kMaxBlocks * 5) / per_tensor;
  return n < 255 ? n : 255;
}

template <class Update, int States, int Tensors = max_tensors<Update, States>()>
struct LaunchArgs {
  static constexpr int kTensors = Tensors;
  const void* grads[Tensors];
  const void* reg_grads[Tensors];
  void* states[States][Tensors];
  int64_t numel[Tensors];
  Update updates[Tensors];
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
};

template <typename T>
struct MathOf {
  using type = float;
};
template <>
struct MathOf<double> {
  using type = double;
};

template <typename T, class Update, int States>
__global__ void __launch_bounds__(kBlock) multi_tensor_kernel(LaunchArgs<Update, States> args, float reg_weight) {
  using M = typename MathOf<T>::type;
  const int t = args.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(args.block_chunk[blockIdx.x]) * kChunk;
  const int64_t end = min(args.numel[t], begin + kChunk);
  const Update update = args.updates[t];
  const T* grad = static_cast<const T*>(args.grads[t]);
  const T* reg = static_cast<const T*>(args.reg_grads[t]);
  T* state[States];
#pragma unroll
  for (int k = 0; k < States; ++k) state[k] = static_cast<T*>(args.states[k][t]);

  for (int64_t base = begin + threadIdx.x; base < end; base += static_cast<int64_t>(blockDim.x) * kIlp) {
    M g[kIlp];
    M s[kIlp][States];
    // Issue every load of kIlp elements before any arithmetic.
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int64_t i = base + static_cast<int64_t>(j) * blockDim.x;
      if (i < end) {
        g[j] = static_cast<M>(grad[i]);
        if (reg != nullptr) g[j] = math::regularized_grad<M>(g[j], static_cast<M>(reg[i]), static_cast<M>(reg_weight));
#pragma unroll
        for (int k = 0; k < States; ++k) s[j][k] = static_cast<M>(state[k][i]);
      }
    }
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      const int64_t i = base + static_cast<int64_t>(j) * blockDim.x;
      if (i < end) {
        update(g[j], s[j]);
#pragma unroll
        for (int k = 0; k < States; ++k) state[k][i] = static_cast<T>(s[j][k]);
      }
    }
  }
}

// Launches fn's updates over tensors [0, l.count): make_update(t) builds the
// functor of tensor t on the host; tensors with no elements are skipped.
template <typename T, class Update, class MakeUpdate>
void multi_tensor_apply(const cpu::TensorLists& l, MakeUpdate&& make_update) {
  constexpr int K = Update::kStates;
  static_assert(sizeof(LaunchArgs<Update, K>) <= kArgBytes, "kernel arguments over 4 KiB");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  LaunchArgs<Update, K> args;
  int tensors = 0, blocks = 0;
  auto launch = [&] {
    if (blocks > 0) {
      multi_tensor_kernel<T, Update, K><<<blocks, kBlock, 0, stream>>>(args, static_cast<float>(l.reg_weight));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    tensors = blocks = 0;
  };
  for (int64_t t = 0; t < l.count; ++t) {
    const int64_t numel = l.offset[t + 1] - l.offset[t];
    if (numel == 0) continue;
    args.grads[tensors] = l.grads[t];
    args.reg_grads[tensors] = l.reg_grads != nullptr ? l.reg_grads[t] : nullptr;
    for (int k = 0; k < K; ++k) args.states[k][tensors] = l.states[k][t];
    args.numel[tensors] = numel;
    args.updates[tensors] = make_update(t);
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      args.block_tensor[blocks] = static_cast<uint8_t>(tensors);
      args.block_chunk[blocks] = static_cast<int32_t>(c);
      if (++blocks == kMaxBlocks) {
        // The tensor may go on in the next launch: keep it as its slot 0.
        const bool more = c + 1 < chunks;
        launch();
        if (more) {
          args.grads[0] = l.grads[t];
          args.reg_grads[0] = l.reg_grads != nullptr ? l.reg_grads[t] : nullptr;
          for (int k = 0; k < K; ++k) args.states[k][0] = l.states[k][t];
          args.numel[0] = numel;
          args.updates[0] = make_update(t);
          tensors = 0;
        } else {
          tensors = -1;
        }
      }
    }
    if (++tensors == LaunchArgs<Update, K>::kTensors) launch();
  }
  launch();
}

}  // namespace cuda
}  // namespace fusedopt
