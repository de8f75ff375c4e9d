// The CUDA launch for the low-precision storage of cpu::Storage: 16-bit
// params rounded stochastically, compensated by a bfloat16 residual or
// written from a float32 master; states in bfloat16, float32 or blockwise
// 8 bits. The update is the same functor as everywhere; what differs is how
// each stream is read into float32 and written back, with the shared
// per-element math of fusedopt/rounding.h and fusedopt/quantize.h, so the
// results are the CPU kernels' bit for bit (the random bits are keyed by the
// element's index, not by who computes it).
//
// Each warp takes one 256-element quantization block at a time, 8 elements
// per lane (lane + 32 j, so each load of the warp is contiguous), keeps the
// block's new states in registers, and reduces the block's absmax with warp
// shuffles before coding it: one pass over memory for 8-bit states too.
//
// Included at the end of multi_tensor_apply.cuh, whose pieces it uses.
#pragma once

#include <type_traits>

#include "fusedopt/quantize.h"
#include "fusedopt/rounding.h"

namespace fusedopt {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kPerLane = math::kQuantBlock / kWarp;
static_assert(kChunk % math::kQuantBlock == 0, "a chunk holds whole quantization blocks");

template <class Hyper>
struct PrecisionScalars {
  Hyper hyper;
  const float* lr;
  const float* grad_scale;
  const float* found_inf;
  cpu::Dtype state_dtype;
  cpu::ParamStorage param;
  bool param_stochastic, state_stochastic;
  cpu::Quant quant[cpu::kMaxStates];
};

template <class Update, int States, int N>
struct PrecisionTableOf {
  static constexpr int kTensors = N;
  void* grads[N];
  void* states[States][N];  // states[0]: the params, or the float32 masters
  void* companions[N];      // the compensated residuals, or the 16-bit params of masters
  uint64_t keys[N];         // stochastic rounding: the param stream's key
  cpu::IndexMap index[N];   // where each local element sits in the whole tensor
  int64_t numel[N];
  Update updates[N];
  const float* steps[N];
  int32_t first_block[N + 1];
  int32_t count;
};

template <class Update, int States>
constexpr int max_precision_tensors() {
  constexpr int scalars = sizeof(PrecisionScalars<typename Update::Hyper>);
  constexpr int per_tensor = (3 + States) * sizeof(void*) + sizeof(uint64_t) + sizeof(cpu::IndexMap) +
                             sizeof(int64_t) + sizeof(Update) + sizeof(void*) + sizeof(int32_t);
  constexpr int most = (kArgBytes - scalars - 2 * sizeof(int32_t)) / per_tensor;
  return sizeof(PrecisionTableOf<Update, States, most>) + scalars <= kArgBytes ? most : most - 1;
}

template <class Update, int States>
using PrecisionTable = PrecisionTableOf<Update, States, max_precision_tensors<Update, States>()>;

// 16-bit values travel as their bits; float32 as itself.
template <typename T>
__device__ __forceinline__ float load_float(const void* base, int64_t i) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return math::bf16_to_float(static_cast<const uint16_t*>(base)[i]);
  } else {
    return math::fp16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

template <typename T>
__device__ __forceinline__ void store_float(void* base, int64_t i, float x, bool stochastic, uint32_t random) {
  if constexpr (std::is_same_v<T, float>) {
    static_cast<float*>(base)[i] = x;
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    static_cast<uint16_t*>(base)[i] = stochastic ? math::bf16_stochastic(x, random) : math::bf16_nearest(x);
  } else {
    static_cast<uint16_t*>(base)[i] = stochastic ? math::fp16_stochastic(x, random) : math::fp16_nearest(x);
  }
}

__device__ __forceinline__ float load_state(cpu::Dtype d, const void* base, int64_t i) {
  switch (d) {
    case cpu::Dtype::kBFloat16: return load_float<c10::BFloat16>(base, i);
    case cpu::Dtype::kFloat16: return load_float<c10::Half>(base, i);
    default: return load_float<float>(base, i);
  }
}

__device__ __forceinline__ void store_state(cpu::Dtype d, void* base, int64_t i, float x, bool stochastic,
                                            uint32_t random) {
  switch (d) {
    case cpu::Dtype::kBFloat16: store_float<c10::BFloat16>(base, i, x, stochastic, random); break;
    case cpu::Dtype::kFloat16: store_float<c10::Half>(base, i, x, stochastic, random); break;
    default: store_float<float>(base, i, x, false, 0); break;
  }
}

// The element's counter for stochastic rounding: its index in the whole tensor.
__device__ __forceinline__ uint64_t global_index(const cpu::IndexMap& m, int64_t i) {
  return static_cast<uint64_t>(m.base + (i / m.row_local) * m.row_global + i % m.row_local);
}

__device__ __forceinline__ uint64_t slot_key(uint64_t param_key, int k) {
  return param_key ^ (0x9e3779b97f4a7c15ull * static_cast<uint64_t>(k));
}

template <typename T, class Update, int K>
__global__ void __launch_bounds__(kBlock)
    precision_kernel(const __grid_constant__ PrecisionTable<Update, K> table,
                     const __grid_constant__ PrecisionScalars<typename Update::Hyper> sc) {
  if (sc.found_inf != nullptr && *sc.found_inf != 0.0f) return;
  const int t = tensor_of_block(table.first_block, table.count);
  const int64_t begin = static_cast<int64_t>(blockIdx.x - table.first_block[t]) * kChunk;
  const int64_t end = min(table.numel[t], begin + kChunk);
  const Update update = update_of<Update>(table, sc, t);
  const bool master = sc.param == cpu::ParamStorage::kMaster;
  const bool compensated = sc.param == cpu::ParamStorage::kCompensated;
  const bool quantized = sc.state_dtype == cpu::Dtype::kQuant8;
  const int64_t code_bytes = math::quant_blocks(table.numel[t]) * math::kQuantBlock;
  T* grad = static_cast<T*>(table.grads[t]);
  const int lane = threadIdx.x % kWarp;
  for (int64_t at = begin + (threadIdx.x / kWarp) * math::kQuantBlock; at < end;
       at += (kBlock / kWarp) * math::kQuantBlock) {
    float s[K][kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = at + lane + kWarp * j;
      if (i >= end) continue;
      float g = load_float<T>(grad, i);
      if (sc.grad_scale != nullptr) {
        g = g / *sc.grad_scale;
        store_float<T>(grad, i, g, false, 0);  // AMP: stored back unscaled
      }
      float m[K];
      if (master) {
        m[0] = static_cast<const float*>(table.states[0][t])[i];
      } else {
        m[0] = load_float<T>(table.states[0][t], i);
        if (compensated) m[0] += math::bf16_to_float(static_cast<const uint16_t*>(table.companions[t])[i]);
      }
#pragma unroll
      for (int k = 1; k < K; ++k) {
        if (quantized) {
          const uint8_t code = static_cast<const uint8_t*>(table.states[k][t])[i];
          const float absmax = reinterpret_cast<const float*>(static_cast<const uint8_t*>(table.states[k][t]) +
                                                              code_bytes)[i / math::kQuantBlock];
          const bool is_signed = sc.quant[k] == cpu::Quant::kSigned;
          const float scale = math::decode_scale(is_signed, absmax);
          m[k] = is_signed ? math::decode_signed(code, scale) : math::decode_unsigned(code, scale);
        } else {
          m[k] = load_state(sc.state_dtype, table.states[k][t], i);
        }
      }
      update(g, m);
      if (master) {
        static_cast<float*>(table.states[0][t])[i] = m[0];
        store_float<T>(table.companions[t], i, m[0], false, 0);
      } else if (compensated) {
        if constexpr (!std::is_same_v<T, float>) {
          uint16_t kept, dropped;
          math::split_compensated<std::is_same_v<T, c10::Half>>(m[0], kept, dropped);
          static_cast<uint16_t*>(table.states[0][t])[i] = kept;
          static_cast<uint16_t*>(table.companions[t])[i] = dropped;
        }
      } else {
        const uint32_t random =
            sc.param_stochastic ? math::rounding_random_bits(std::is_same_v<T, c10::BFloat16>, table.keys[t],
                                                             global_index(table.index[t], i))
                                : 0u;
        store_float<T>(table.states[0][t], i, m[0], sc.param_stochastic, random);
      }
#pragma unroll
      for (int k = 1; k < K; ++k) s[k][j] = m[k];
    }
#pragma unroll
    for (int k = 1; k < K; ++k) {
      if (quantized) {
        // The block's largest |x| as the largest bit pattern with the sign
        // cleared (a NaN wins), as the CPU kernels take it.
        uint32_t bits = 0;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          if (at + lane + kWarp * j < end) bits = max(bits, math::float_bits(s[k][j]) & 0x7FFFFFFFu);
        }
#pragma unroll
        for (int offset = kWarp / 2; offset > 0; offset /= 2) bits = max(bits, __shfl_xor_sync(0xFFFFFFFFu, bits, offset));
        const float absmax = math::bits_float(bits);
        uint8_t* codes = static_cast<uint8_t*>(table.states[k][t]);
        if (lane == 0) reinterpret_cast<float*>(codes + code_bytes)[at / math::kQuantBlock] = absmax;
        const bool is_signed = sc.quant[k] == cpu::Quant::kSigned;
        const float inv = math::encode_scale(is_signed, absmax);
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int64_t i = at + lane + kWarp * j;
          if (i < end) {
            codes[i] = is_signed ? math::encode_signed(s[k][j], inv)
                                 : math::encode_unsigned(s[k][j], inv, math::code_random_byte(slot_key(table.keys[t], k),
                                                                                              global_index(table.index[t], i)));
          }
        }
      } else {
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int64_t i = at + lane + kWarp * j;
          if (i >= end) continue;
          const uint32_t random =
              sc.state_stochastic ? math::rounding_random_bits(sc.state_dtype == cpu::Dtype::kBFloat16,
                                                               slot_key(table.keys[t], k), global_index(table.index[t], i))
                                  : 0u;
          store_state(sc.state_dtype, table.states[k][t], i, s[k][j], sc.state_stochastic, random);
        }
      }
    }
  }
}

// Launches Update over the tensors of l whose storage is not plain (see
// multi_tensor_apply), on the current stream.
template <typename T, class Update, class MakeUpdate>
void precision_apply(const cpu::TensorLists& l, const typename Update::Hyper& hyper, MakeUpdate&& make_update) {
  constexpr int K = Update::kStates;
  using Table = PrecisionTable<Update, K>;
  using Scalars = PrecisionScalars<typename Update::Hyper>;
  static_assert(sizeof(Table) + sizeof(Scalars) <= kArgBytes, "kernel arguments over 4 KiB");
  const cpu::Storage& st = l.storage;
  FUSEDOPT_CHECK(l.reg_grads == nullptr, "fusedopt: the classic ops take no low-precision storage");
  Scalars sc{hyper, l.device_lr, l.grad_scale, l.found_inf, st.state_dtype, st.param, st.param_stochastic,
             st.state_stochastic, {}};
  for (int k = 0; k < cpu::kMaxStates; ++k) sc.quant[k] = st.quant[k];
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_tables<Table, Update>(
      l, make_update,
      [&](Table& table, int i, int64_t t) {
        table.grads[i] = const_cast<void*>(l.grads[t]);
        for (int k = 0; k < K; ++k) table.states[k][i] = l.states[k][t];
        table.companions[i] = st.companions != nullptr ? st.companions[t] : nullptr;
        table.keys[i] = st.keys != nullptr ? st.keys[t] : 0;
        const int64_t numel = l.offset[t + 1] - l.offset[t];
        table.index[i] = st.index != nullptr ? st.index[t] : cpu::IndexMap{0, numel, numel};
      },
      [&](const Table& table, int64_t blocks) {
        precision_kernel<T, Update, K><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(table, sc);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// Launches Update over tensors [0, l.count): the plain kernel where every
// stream is in T, the precision kernel otherwise.
template <typename T, class Update, class MakeUpdate>
void multi_tensor_apply(const cpu::TensorLists& l, const typename Update::Hyper& hyper, MakeUpdate&& make_update) {
  const cpu::Storage& st = l.storage;
  const bool plain = st.param == cpu::ParamStorage::kPlain && !st.param_stochastic && !st.state_stochastic &&
                     st.state_dtype == l.dtype;
  if constexpr (std::is_same_v<T, double>) {
    FUSEDOPT_CHECK(plain, "fusedopt: float64 params keep float64 states");
  } else {
    if (!plain) return precision_apply<T, Update>(l, hyper, make_update);
  }
  plain_apply<T, Update>(l, hyper, make_update);
}

}  // namespace cuda
}  // namespace fusedopt
