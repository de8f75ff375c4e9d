// The CPU kernels, written once and compiled once per instruction set by
// kernels_<isa>.cpp, which include this file inside a `#pragma GCC target`
// region with FUSEDOPT_ISA naming the namespace. Everything here has internal
// or ISA-specific linkage, so no function built for AVX2 can be picked by the
// linker for a caller built for the baseline.
//
// Each piece of a tensor is one vectorized loop that loads every
// stream once, runs the algorithm's update functor in the math type (float,
// or double for float64), and stores every state once: one pass over memory.

#ifndef FUSEDOPT_ISA
#error "kernels_impl.h is included by kernels_<isa>.cpp with FUSEDOPT_ISA set"
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "fusedopt/dispatch.h"
#include "kernel_api.h"
#include "partition.h"
#include "update_variants.h"

namespace fusedopt {
namespace cpu {
namespace FUSEDOPT_ISA {
namespace {

struct BFloat16 { uint16_t bits; };
// IEEE binary16 as raw bits: GCC 12 does not vectorize conversions of its
// _Float16 type (each element would go through scalar vcvtph2ps and even a
// libgcc call), so Half is converted with integer and float bit operations
// (math::fp16_to_float / fp16_nearest) that vectorize like everything else.
struct Half { uint16_t bits; };

template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

#define FUSEDOPT_ALWAYS_INLINE inline __attribute__((always_inline))
// Plain bfloat16 pieces, float32 params with bfloat16 states rounded to
// nearest, and bfloat16 params rounded stochastically or compensated are
// converted in registers inside the update loop (update_run_vec, on the Vec
// lanes of lanes.h) in the AVX-512 and AVX2 kernels. GCC's own vectorized
// loop did that well with AVX-512's 32 vector registers but spilled with
// AVX2's 16, slower there than the blocked path below (16M-element AdamW, 1
// thread, 2026-11-27: bfloat16 17.4 -> 13.4 ms, torch fused 17.8; float32
// params with bfloat16 states 28 -> 9 ms, float32 states 10); the lane loops
// are fast on both. The baseline build keeps the blocked path.
#if defined(FUSEDOPT_LANES_AVX512) || defined(FUSEDOPT_LANES_AVX2)
#define FUSEDOPT_LANE_LOOPS 1
constexpr bool kBf16InRegisters = true;
#else
constexpr bool kBf16InRegisters = false;
#endif

FUSEDOPT_ALWAYS_INLINE float to_math(float x) { return x; }
FUSEDOPT_ALWAYS_INLINE double to_math(double x) { return x; }
FUSEDOPT_ALWAYS_INLINE float to_math(Half x) { return math::fp16_to_float(x.bits); }
FUSEDOPT_ALWAYS_INLINE float to_math(BFloat16 x) { return math::bf16_to_float(x.bits); }

template <typename T> FUSEDOPT_ALWAYS_INLINE T from_math(float x);
template <> FUSEDOPT_ALWAYS_INLINE float from_math<float>(float x) { return x; }
template <> FUSEDOPT_ALWAYS_INLINE Half from_math<Half>(float x) { return Half{math::fp16_nearest(x)}; }
template <> FUSEDOPT_ALWAYS_INLINE BFloat16 from_math<BFloat16>(float x) { return BFloat16{math::bf16_nearest(x)}; }
FUSEDOPT_ALWAYS_INLINE double from_math_double(double x) { return x; }

template <typename T, typename M>
FUSEDOPT_ALWAYS_INLINE T store_as(M x) {
  if constexpr (std::is_same_v<T, double>) return from_math_double(x);
  else return from_math<T>(x);
}

// The inner loop over one dense run. Each stream is its own restrict pointer
// parameter so GCC vectorizes without alias checks; `#pragma omp simd` is not
// used because its privatized copy of `s` blocks vectorization in GCC 12.
// The functor is copied so its scalars live in registers, not behind a
// pointer that the stores might alias.
// Where a run's gradient comes from: one stream, or the seed document's
// dw + lambdaa * dr (fusedopt.classic).
template <typename T>
struct PlainGrad {
  const T* grad;
  FUSEDOPT_ALWAYS_INLINE auto operator()(int64_t i) const { return to_math(grad[i]); }
};

template <typename T>
struct RegularizedGrad {
  const T* dw;
  const T* dr;
  typename MathType<T>::type lambdaa;
  FUSEDOPT_ALWAYS_INLINE auto operator()(int64_t i) const {
    return math::regularized_grad(to_math(dw[i]), to_math(dr[i]), lambdaa);
  }
};

// AMP: the gradient divided by the loss scale, and stored back unscaled (as
// torch's fused optimizers leave it).
template <typename T>
struct ScaledGrad {
  T* grad;
  typename MathType<T>::type scale;
  FUSEDOPT_ALWAYS_INLINE auto operator()(int64_t i) const {
    const auto g = to_math(grad[i]) / scale;
    grad[i] = store_as<T>(g);
    return g;
  }
};

template <typename T, class Update, class Grad, typename... Ptr>
void update_run(const Update& update, const Grad grad, int64_t begin, int64_t end, Ptr __restrict... state) {
  using M = typename MathType<T>::type;
  const Update u = update;
  for (int64_t i = begin; i < end; ++i) {
    M s[sizeof...(Ptr)] = {to_math(state[i])...};
    u(grad(i), s);
    int k = 0;
    ((state[i] = store_as<std::remove_pointer_t<Ptr>>(s[k++])), ...);
  }
}

// Slot K of tensor t from element `begin`: the param (K = 0) as T, a state as S.
template <typename T, typename S, std::size_t K>
FUSEDOPT_ALWAYS_INLINE auto slot(const TensorLists& l, int64_t t, int64_t begin) {
  using Element = std::conditional_t<K == 0, T, S>;
  return static_cast<Element*>(l.states[K][t]) + begin;
}

// fn(the gradient of tensor t from element `begin`, as its kind of Grad).
template <typename T, class Fn>
FUSEDOPT_ALWAYS_INLINE void with_grad(const TensorLists& l, int64_t t, int64_t begin, Fn&& fn) {
  using M = typename MathType<T>::type;
  const T* grad = static_cast<const T*>(l.grads[t]) + begin;
  if (l.reg_grads != nullptr) {
    fn(RegularizedGrad<T>{grad, static_cast<const T*>(l.reg_grads[t]) + begin, static_cast<M>(l.reg_weight)});
  } else if (l.grad_scale != nullptr) {
    // The op declares its grads mutable when it passes a grad_scale.
    fn(ScaledGrad<T>{const_cast<T*>(grad), static_cast<M>(*l.grad_scale)});
  } else {
    fn(PlainGrad<T>{grad});
  }
}

// 16-bit pieces go through float32 buffers a block at a time, so the update
// itself runs the float32 loop. Converting inside the update loop instead
// leaves GCC short of vector registers: bfloat16 Adam ran 2.4x slower than
// float32 in cache that way, where the data volume would let it run faster.
constexpr int kBlock = 512;

template <typename T>
FUSEDOPT_ALWAYS_INLINE void widen(const T* src, float* dst, int n) {
  int i = 0;
#if defined(FUSEDOPT_AVX2_F16C)
  if constexpr (std::is_same_v<T, Half>) {
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = to_math(src[i]);
}

#if defined(FUSEDOPT_AVX2_F16C)
// math::bf16_nearest and math::bf16_stochastic on 8 lanes, in the low halves
// of 32-bit lanes, without the masking GCC adds around the narrowing (the
// rounded value always fits 16 bits); bf16_pack16 packs two such vectors
// into 16 bfloat16 values in order.
FUSEDOPT_ALWAYS_INLINE __m256i bf16_if_not_nan8(__m256 x, __m256i rounded) {
  return _mm256_blendv_epi8(_mm256_set1_epi32(0x7FC0), rounded, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_ORD_Q)));
}
// Right for every lane but NaN.
FUSEDOPT_ALWAYS_INLINE __m256i bf16_nearest8_not_nan(__m256 x) {
  using Bits8 = uint32_t __attribute__((vector_size(32)));
  return (__m256i)(math::bf16_nearest_carry((Bits8)_mm256_castps_si256(x)) >> 16);
}
FUSEDOPT_ALWAYS_INLINE __m256i bf16_nearest8(__m256 x) { return bf16_if_not_nan8(x, bf16_nearest8_not_nan(x)); }
FUSEDOPT_ALWAYS_INLINE __m256i bf16_stochastic8(__m256 x, __m256i random) {
  return bf16_if_not_nan8(x, _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(x), random), 16));
}
FUSEDOPT_ALWAYS_INLINE __m256i bf16_pack16(__m256i lo, __m256i hi) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
}
#endif

template <typename T>
FUSEDOPT_ALWAYS_INLINE void narrow(const float* src, T* dst, int n) {
  int i = 0;
#if defined(FUSEDOPT_AVX2_F16C)
  if constexpr (std::is_same_v<T, Half>) {
    for (; i + 8 <= n; i += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    }
  }
  if constexpr (std::is_same_v<T, BFloat16>) {
    for (; i + 16 <= n; i += 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                          bf16_pack16(bf16_nearest8(_mm256_loadu_ps(src + i)), bf16_nearest8(_mm256_loadu_ps(src + i + 8))));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = from_math<T>(src[i]);
}

// math::random_bits(key, first + i) for a run of consecutive counters whose
// high halves agree (all but one run in 2^32: `fits`), as the same hash on
// 32-bit lanes only, which vectorizes.
struct RandomRun {
  uint32_t low, key_low, second;
  RandomRun(uint64_t key, uint64_t first)
      : low(static_cast<uint32_t>(first)),
        key_low(static_cast<uint32_t>(key)),
        second(static_cast<uint32_t>(first >> 32) ^ static_cast<uint32_t>(key >> 32) ^ 0x9e3779b9u) {}
  static bool fits(uint64_t first, int64_t n) {
    return static_cast<uint64_t>(static_cast<uint32_t>(first)) + static_cast<uint64_t>(n) <= (uint64_t{1} << 32);
  }
  // i: uint32_t, or LaneBits (lanes.h) for counters first + i[0], ...
  template <typename I>
  FUSEDOPT_ALWAYS_INLINE I operator()(I i) const {
    return math::mix32(math::mix32((low + i) ^ key_low) ^ second);
  }
};

// math::random_bits for the n consecutive counters first, first + 1, ...
FUSEDOPT_ALWAYS_INLINE void random_run(uint64_t key, uint64_t first, int n, uint32_t* out) {
  if (!RandomRun::fits(first, n)) {
    for (int i = 0; i < n; ++i) out[i] = math::random_bits(key, first + static_cast<uint64_t>(i));
    return;
  }
  const RandomRun run(key, first);
  for (int i = 0; i < n; ++i) out[i] = run(static_cast<uint32_t>(i));
}

// The random bits of counters first, first + 1, ... in parts of a 32-bit
// word (n <= kBlock): uint8_t, math::code_random_byte, and uint16_t,
// math::bf16_random_bits: the words of counters first / parts ... read as
// parts.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "random parts are read from the words' memory");
template <typename Part, typename = std::enable_if_t<sizeof(Part) < 4>>
FUSEDOPT_ALWAYS_INLINE void random_run(uint64_t key, uint64_t first, int n, Part* out) {
  constexpr uint64_t kParts = 4 / sizeof(Part);
  alignas(64) uint32_t words[kBlock / kParts + 2];
  const uint64_t first_word = first / kParts;
  random_run(key, first_word,
             static_cast<int>((first + static_cast<uint64_t>(n) + kParts - 1) / kParts - first_word), words);
  std::memcpy(out, reinterpret_cast<const Part*>(words) + first % kParts, sizeof(Part) * static_cast<size_t>(n));
}

// math::bf16_random_bits(key, first + i) for a run of counters from an even
// first, from the RandomRun of their words.
struct Bf16RandomRun {
  RandomRun words;
  Bf16RandomRun(uint64_t key, uint64_t first) : words(key, first / 2) {}
  static bool fits(uint64_t first, int64_t n) { return first % 2 == 0 && RandomRun::fits(first / 2, n / 2 + 1); }
  FUSEDOPT_ALWAYS_INLINE uint32_t operator()(uint32_t i) const { return (words(i >> 1) >> (16u * (i & 1u))) & 0xFFFFu; }
};

// Stochastic rounding's random bits (uint32_t: random_bits, uint16_t:
// bf16_random_bits, uint8_t: code_random_byte) for elements [begin, begin + n) of tensor t in stream
// `key`, drawn by each element's index in the whole tensor: runs of
// consecutive indices, cut where a shard's row ends.
template <typename Random>
FUSEDOPT_ALWAYS_INLINE void random_block(const TensorLists& l, int64_t t, int64_t begin, int n, uint64_t key,
                                         Random* out) {
  if (l.storage.index == nullptr) {
    random_run(key, static_cast<uint64_t>(begin), n, out);
    return;
  }
  const IndexMap m = l.storage.index[t];
  int64_t row = begin / m.row_local, column = begin % m.row_local;
  for (int done = 0; done < n;) {
    const int run = static_cast<int>(std::min<int64_t>(m.row_local - column, n - done));
    random_run(key, static_cast<uint64_t>(m.base + row * m.row_global + column), run, out + done);
    done += run;
    column = 0;
    ++row;
  }
}

// The stream key of state slot k (k = 0: the param) of tensor t at this step.
FUSEDOPT_ALWAYS_INLINE uint64_t slot_key(const TensorLists& l, int64_t t, int k) {
  return l.storage.keys[t] ^ (0x9e3779b97f4a7c15ull * static_cast<uint64_t>(k));
}

FUSEDOPT_ALWAYS_INLINE void narrow_stochastic(const float* src, BFloat16* dst, const uint16_t* random, int n) {
  int i = 0;
#if defined(FUSEDOPT_AVX2_F16C)
  for (; i + 16 <= n; i += 16) {
    const __m256i r0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(random + i)));
    const __m256i r1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(random + i + 8)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), bf16_pack16(bf16_stochastic8(_mm256_loadu_ps(src + i), r0),
                                                                         bf16_stochastic8(_mm256_loadu_ps(src + i + 8), r1)));
  }
#endif
  for (; i < n; ++i) dst[i] = BFloat16{math::bf16_stochastic(src[i], random[i])};
}
FUSEDOPT_ALWAYS_INLINE void narrow_stochastic(const float* src, Half* dst, const uint32_t* random, int n) {
  for (int i = 0; i < n; ++i) dst[i] = Half{math::fp16_stochastic(src[i], random[i])};
}
template <typename Random>
FUSEDOPT_ALWAYS_INLINE void narrow_stochastic(const float* src, float* dst, const Random*, int n) {
  std::memcpy(dst, src, sizeof(float) * n);
}

#include "quant_codes.h"

// The block absmaxes of an 8-bit state of tensor t: after its codes.
FUSEDOPT_ALWAYS_INLINE float* block_absmax(const TensorLists& l, int64_t t, void* base) {
  const int64_t numel = l.offset[t + 1] - l.offset[t];
  return reinterpret_cast<float*>(static_cast<uint8_t*>(base) + math::quant_blocks(numel) * math::kQuantBlock);
}

// Elements [at, at + n) of an 8-bit state (at: a multiple of the block).
FUSEDOPT_ALWAYS_INLINE void dequantize(const TensorLists& l, int64_t t, int k, void* base, int64_t at, float* dst,
                                       int n) {
  const uint8_t* codes = static_cast<const uint8_t*>(base) + at;
  const float* absmax = block_absmax(l, t, base) + at / math::kQuantBlock;
  const bool is_signed = l.storage.quant[k] == Quant::kSigned;
  for (int b = 0; b < n; b += math::kQuantBlock) {
    const int m = n - b < math::kQuantBlock ? n - b : math::kQuantBlock;
    const float scale = math::decode_scale(is_signed, absmax[b / math::kQuantBlock]);
    if (is_signed) decode_codes<true>(codes + b, scale, dst + b, m);
    else decode_codes<false>(codes + b, scale, dst + b, m);
  }
}

FUSEDOPT_ALWAYS_INLINE void quantize(const TensorLists& l, int64_t t, int k, const float* src, void* base,
                                     int64_t at, int n) {
  uint8_t* codes = static_cast<uint8_t*>(base) + at;
  float* absmax = block_absmax(l, t, base) + at / math::kQuantBlock;
  const bool is_signed = l.storage.quant[k] == Quant::kSigned;
  alignas(64) uint8_t random[kBlock];
  if (!is_signed) random_block(l, t, at, n, slot_key(l, t, k), random);  // quantize.h: they round stochastically
  for (int b = 0; b < n; b += math::kQuantBlock) {
    const int m = n - b < math::kQuantBlock ? n - b : math::kQuantBlock;
    const float a = block_max(src + b, m);
    absmax[b / math::kQuantBlock] = a;
    const float inv = math::encode_scale(is_signed, a);
    if (is_signed) encode_codes<true>(src + b, inv, nullptr, codes + b, m);
    else encode_codes<false>(src + b, inv, random + b, codes + b, m);
  }
}

// A state slot in the call's state dtype (the params', bfloat16, float32
// beside the float32 master of 16-bit params, or 8-bit).
FUSEDOPT_ALWAYS_INLINE void widen_state(const TensorLists& l, int64_t t, int k, void* base, int64_t at, float* dst,
                                        int n) {
  switch (l.storage.state_dtype) {
    case Dtype::kQuant8: dequantize(l, t, k, base, at, dst, n); break;
    case Dtype::kBFloat16: widen(static_cast<const BFloat16*>(base) + at, dst, n); break;
    case Dtype::kFloat16: widen(static_cast<const Half*>(base) + at, dst, n); break;
    default: std::memcpy(dst, static_cast<const float*>(base) + at, sizeof(float) * n); break;
  }
}

FUSEDOPT_ALWAYS_INLINE void narrow_state(const TensorLists& l, int64_t t, int k, const float* src, void* base,
                                         int64_t at, int n) {
  const Dtype d = l.storage.state_dtype;
  if (d == Dtype::kQuant8) {
    quantize(l, t, k, src, base, at, n);
  } else if (d == Dtype::kFloat32) {
    std::memcpy(static_cast<float*>(base) + at, src, sizeof(float) * n);
  } else if (l.storage.state_stochastic && d == Dtype::kBFloat16) {
    alignas(64) uint16_t random[kBlock];
    random_block(l, t, at, n, slot_key(l, t, k), random);
    narrow_stochastic(src, static_cast<BFloat16*>(base) + at, random, n);
  } else if (l.storage.state_stochastic) {
    alignas(64) uint32_t random[kBlock];
    random_block(l, t, at, n, slot_key(l, t, k), random);
    narrow_stochastic(src, static_cast<Half*>(base) + at, random, n);
  } else if (d == Dtype::kBFloat16) {
    narrow(src, static_cast<BFloat16*>(base) + at, n);
  } else {
    narrow(src, static_cast<Half*>(base) + at, n);
  }
}

// Pieces whose storage is not the update's math type go through float32
// buffers a block at a time, so the update itself runs the float32 loop:
// 16-bit params and states (converting inside the update loop leaves GCC
// short of vector registers: bfloat16 Adam ran 2.4x slower than float32 in
// cache that way), and the low-precision modes of cpu::Storage, whose
// conversions (stochastic rounding, compensated and master params) happen
// here, once per block, around the same update. Beside float32 params only
// the states take the buffers (update_piece_states_blocked).
//
// load_block and store_block hold everything of a block but the update, so
// they are compiled once per param type, not into each of the ~90 update
// functors: inlined there, each kernels_<isa>.cpp took 5-10 minutes to build
// on 2 cores. A call per 512 elements costs nothing measurable.

// States 1..S of the block [at, at + n) of tensor t as float32 in s[1..S),
// and back to their storage.
__attribute__((noinline)) void load_states(const TensorLists& l, int64_t t, int64_t at, int n, int S,
                                           float (*s)[kBlock]) {
  for (int k = 1; k < S; ++k) widen_state(l, t, k, l.states[k][t], at, s[k], n);
}

__attribute__((noinline)) void store_states(const TensorLists& l, int64_t t, int64_t at, int n, int S,
                                            float (*s)[kBlock]) {
  for (int k = 1; k < S; ++k) narrow_state(l, t, k, s[k], l.states[k][t], at, n);
}

// The block [at, at + n) of tensor t as float32: its gradient in g (AMP:
// divided by the scale and stored back unscaled), the param (plus its
// compensated residual, or the float32 master) in s[0], its states in s[1..S).
// Returns whether r holds the regularizer's gradient (fusedopt.classic).
template <typename T>
__attribute__((noinline)) bool load_block(const TensorLists& l, int64_t t, int64_t at, int n, int S, float* g,
                                          float* r, float (*s)[kBlock]) {
  const Storage& st = l.storage;
  T* grad = static_cast<T*>(const_cast<void*>(l.grads[t])) + at;
  widen(grad, g, n);
  if (l.grad_scale != nullptr) {
    const float scale = *l.grad_scale;
    for (int i = 0; i < n; ++i) g[i] = g[i] / scale;
    narrow(g, grad, n);  // the op declares its grads mutable when it passes a grad_scale
  }
  if (st.param == ParamStorage::kMaster) {
    std::memcpy(s[0], static_cast<const float*>(l.states[0][t]) + at, sizeof(float) * n);
  } else {
    widen(static_cast<const T*>(l.states[0][t]) + at, s[0], n);
  }
  if (st.param == ParamStorage::kCompensated) {
    widen(static_cast<const BFloat16*>(st.companions[t]) + at, r, n);
    for (int i = 0; i < n; ++i) s[0][i] += r[i];
  }
  load_states(l, t, at, n, S, s);
  if (l.reg_grads == nullptr) return false;
  widen(static_cast<const T*>(l.reg_grads[t]) + at, r, n);
  return true;
}

// The updated block back to its storage, rounded as the storage asks.
template <typename T>
__attribute__((noinline)) void store_block(const TensorLists& l, int64_t t, int64_t at, int n, int S,
                                           float (*s)[kBlock]) {
  const Storage& st = l.storage;
  T* param = static_cast<T*>(l.states[0][t]) + at;
  if (st.param == ParamStorage::kMaster) {
    std::memcpy(static_cast<float*>(l.states[0][t]) + at, s[0], sizeof(float) * n);
    narrow(s[0], static_cast<T*>(st.companions[t]) + at, n);
  } else if (st.param == ParamStorage::kCompensated) {
    if constexpr (!std::is_same_v<T, float>) {
      BFloat16* residual = static_cast<BFloat16*>(st.companions[t]) + at;
      for (int i = 0; i < n; ++i) {
        uint16_t kept, dropped;
        math::split_compensated<std::is_same_v<T, Half>>(s[0][i], kept, dropped);
        param[i] = T{kept};
        residual[i] = BFloat16{dropped};
      }
    }
  } else if (st.param_stochastic && !std::is_same_v<T, float>) {
    alignas(64) std::conditional_t<std::is_same_v<T, BFloat16>, uint16_t, uint32_t> random[kBlock];
    random_block(l, t, at, n, slot_key(l, t, 0), random);
    narrow_stochastic(s[0], param, random, n);
  } else {
    narrow(s[0], param, n);
  }
  store_states(l, t, at, n, S, s);
}

// float32 params with 8-bit (or stochastically rounded 16-bit) states: the
// grad and param are read and written where they are, only the states go
// through buffers (1 x 16.8M 8-bit AdamW, 2 threads: 18.7 ms with the copies,
// 12-14 without).
template <class Update, std::size_t... K>
void update_piece_states_blocked(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end,
                                 std::index_sequence<K...>) {
  constexpr int S = sizeof...(K) + 1;
  alignas(64) float s[S][kBlock];  // s[0] unused: the param is updated in place
  float* param = static_cast<float*>(l.states[0][t]);
  for (int64_t at = begin; at < end; at += kBlock) {
    const int n = static_cast<int>(end - at < kBlock ? end - at : kBlock);
    load_states(l, t, at, n, S, s);
    with_grad<float>(l, t, at, [&](auto g) { update_run<float>(u, g, 0, n, param + at, s[K + 1]...); });
    store_states(l, t, at, n, S, s);
  }
}

template <typename T, class Update, std::size_t... K>
void update_piece_blocked(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end,
                          std::index_sequence<K...>) {
  constexpr int S = sizeof...(K);
  alignas(64) float g[kBlock], r[kBlock], s[S][kBlock];
  for (int64_t at = begin; at < end; at += kBlock) {
    const int n = static_cast<int>(end - at < kBlock ? end - at : kBlock);
    if (load_block<T>(l, t, at, n, S, g, r, s)) {
      update_run<float>(u, RegularizedGrad<float>{g, r, static_cast<float>(l.reg_weight)}, 0, n, s[K]...);
    } else {
      update_run<float>(u, PlainGrad<float>{g}, 0, n, s[K]...);
    }
    store_block<T>(l, t, at, n, S, s);
  }
}

// bfloat16 params rounded stochastically or compensated, with bfloat16
// states rounded to nearest, converted in registers like the plain bfloat16
// pieces (update_run_param_vec) instead of through the blocked path's
// buffers. Stochastic (Mode = Bf16RandomRun): element i's random bits are
// those of counter begin + i, computed in the loop; compensated:
// math::split_compensated. The blocked path's bits, element for element.
// Used where kBf16InRegisters; this is the lane loops' scalar tail.
struct CompensatedParam {};

template <class Mode, class Update, class Grad, typename... Ptr>
void update_run_param(const Update& update, const Grad grad, int64_t begin, int64_t end, const Mode mode,
                      BFloat16* __restrict param, BFloat16* __restrict residual, Ptr __restrict... state) {
  const Update u = update;
  for (int64_t i = begin; i < end; ++i) {
    float s[1 + sizeof...(Ptr)] = {to_math(param[i]), to_math(state[i])...};
    if constexpr (std::is_same_v<Mode, CompensatedParam>) s[0] += to_math(residual[i]);
    u(grad(i), s);
    if constexpr (std::is_same_v<Mode, CompensatedParam>) {
      uint16_t kept, dropped;
      math::split_compensated<false>(s[0], kept, dropped);
      param[i] = BFloat16{kept};
      residual[i] = BFloat16{dropped};
    } else {
      param[i] = BFloat16{math::bf16_stochastic(s[0], mode(static_cast<uint32_t>(i)))};
    }
    int k = 1;
    ((state[i] = from_math<BFloat16>(s[k++])), ...);
  }
}

#if defined(FUSEDOPT_LANE_LOOPS)
constexpr int kPair = 2 * kLanes;

// Where the lane loops' compensated stores leave a pair of vectors to the
// scalar code (rare values: see lanes_avx512.h and lanes_avx2.h).
__attribute__((noinline, cold)) void store_pair_compensated_lanes(BFloat16* param, BFloat16* residual, Vec lo,
                                                                  Vec hi) {
  alignas(64) float lanes[kPair];
  store_pair(lanes, lo, hi);
  for (int i = 0; i < kPair; ++i) math::split_compensated<false>(lanes[i], param[i].bits, residual[i].bits);
}
#endif

#if defined(FUSEDOPT_LANES_AVX512)
#include "lanes_avx512.h"
#elif defined(FUSEDOPT_LANES_AVX2)
#include "lanes_avx2.h"
#endif

#if defined(FUSEDOPT_LANE_LOOPS)
// The gradient kinds above, kPair elements from i.
template <typename T>
FUSEDOPT_ALWAYS_INLINE void grad_pair(const PlainGrad<T>& g, int64_t i, Vec& lo, Vec& hi) {
  lo = load_lanes(g.grad + i);
  hi = load_lanes(g.grad + i + kLanes);
}
template <typename T>
FUSEDOPT_ALWAYS_INLINE void grad_pair(const RegularizedGrad<T>& g, int64_t i, Vec& lo, Vec& hi) {
  lo = math::regularized_grad(load_lanes(g.dw + i), load_lanes(g.dr + i), g.lambdaa);
  hi = math::regularized_grad(load_lanes(g.dw + i + kLanes), load_lanes(g.dr + i + kLanes), g.lambdaa);
}
template <typename T>
FUSEDOPT_ALWAYS_INLINE void grad_pair(const ScaledGrad<T>& g, int64_t i, Vec& lo, Vec& hi) {
  lo = load_lanes(g.grad + i) / g.scale;
  hi = load_lanes(g.grad + i + kLanes) / g.scale;
  store_pair(g.grad + i, lo, hi);
}

// update_run and update_run_param kPair elements at a time on two Vec (the
// tail on floats): the same bits.
template <typename T, class Update, class Grad, typename... Ptr>
void update_run_vec(const Update& update, const Grad grad, int64_t n, Ptr __restrict... state) {
  const Update u = update;
  int64_t i = 0;
  for (; i + kPair <= n; i += kPair) {
    Vec lo[sizeof...(Ptr)] = {load_lanes(state + i)...};
    Vec hi[sizeof...(Ptr)] = {load_lanes(state + i + kLanes)...};
    Vec g_lo, g_hi;
    grad_pair(grad, i, g_lo, g_hi);
    u(g_lo, lo);
    u(g_hi, hi);
    int k = 0;
    ((store_pair(state + i, lo[k], hi[k]), ++k), ...);
  }
  update_run<T>(u, grad, i, n, state...);
}

template <class Mode, class Update, class Grad, typename... Ptr>
void update_run_param_vec(const Update& update, const Grad grad, int64_t n, const Mode mode,
                          BFloat16* __restrict param, BFloat16* __restrict residual, Ptr __restrict... state) {
  constexpr bool kCompensated = std::is_same_v<Mode, CompensatedParam>;
  const Update u = update;
  int64_t i = 0;
  for (; i + kPair <= n; i += kPair) {
    Vec lo[1 + sizeof...(Ptr)] = {load_lanes(param + i), load_lanes(state + i)...};
    Vec hi[1 + sizeof...(Ptr)] = {load_lanes(param + i + kLanes), load_lanes(state + i + kLanes)...};
    if constexpr (kCompensated) {
      lo[0] = lo[0] + load_lanes(residual + i);
      hi[0] = hi[0] + load_lanes(residual + i + kLanes);
    }
    Vec g_lo, g_hi;
    grad_pair(grad, i, g_lo, g_hi);
    u(g_lo, lo);
    u(g_hi, hi);
    if constexpr (kCompensated) {
      store_pair_compensated(param + i, residual + i, lo[0], hi[0]);
    } else {
      store_pair_stochastic(param + i, lo[0], hi[0], mode, static_cast<uint32_t>(i));
    }
    int k = 1;
    ((store_pair(state + i, lo[k], hi[k]), ++k), ...);
  }
  update_run_param(u, grad, i, n, mode, param, residual, state...);
}
#endif

// States of type S (the params' by default; in the lane loops bfloat16
// beside float32 params, rounded to nearest in registers).
template <typename T, typename S = T, class Update, std::size_t... K>
void update_piece(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end,
                  std::index_sequence<K...>) {
  with_grad<T>(l, t, begin, [&](auto g) {
#if defined(FUSEDOPT_LANE_LOOPS)
    if constexpr (std::is_same_v<S, BFloat16>) {
      return update_run_vec<T>(u, g, end - begin, slot<T, S, K>(l, t, begin)...);
    }
#endif
    update_run<T>(u, g, 0, end - begin, slot<T, S, K>(l, t, begin)...);
  });
}

// Whether piece [begin, end) of a bfloat16 list can take update_run_param.
inline bool direct_param_mode(const TensorLists& l, int64_t begin, int64_t end) {
  const Storage& st = l.storage;
  if (st.state_dtype != Dtype::kBFloat16 || st.state_stochastic || l.reg_grads != nullptr) return false;
  if (st.param == ParamStorage::kCompensated) return true;
  // Stochastic without an index map, over counters of one Bf16RandomRun (an
  // even first: pieces start at multiples of TensorLists::align).
  return st.param == ParamStorage::kPlain && st.param_stochastic && st.index == nullptr &&
         Bf16RandomRun::fits(static_cast<uint64_t>(begin), end - begin);
}

template <class Update, std::size_t... K>
void update_piece_param(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end,
                        std::index_sequence<K...>) {
  const Storage& st = l.storage;
  BFloat16* param = static_cast<BFloat16*>(l.states[0][t]) + begin;
  const BFloat16* grad = static_cast<const BFloat16*>(l.grads[t]) + begin;
  const auto run_mode = [&](auto g, auto mode, BFloat16* residual) {
#if defined(FUSEDOPT_LANE_LOOPS)
    update_run_param_vec(u, g, end - begin, mode, param, residual, (static_cast<BFloat16*>(l.states[K + 1][t]) + begin)...);
#else
    update_run_param(u, g, 0, end - begin, mode, param, residual, (static_cast<BFloat16*>(l.states[K + 1][t]) + begin)...);
#endif
  };
  const auto run = [&](auto g) {
    if (st.param == ParamStorage::kCompensated) {
      run_mode(g, CompensatedParam{}, static_cast<BFloat16*>(st.companions[t]) + begin);
    } else {
      run_mode(g, Bf16RandomRun(slot_key(l, t, 0), static_cast<uint64_t>(begin)), nullptr);
    }
  };
  if (l.grad_scale != nullptr) {
    run(ScaledGrad<BFloat16>{const_cast<BFloat16*>(grad), *l.grad_scale});
  } else {
    run(PlainGrad<BFloat16>{grad});
  }
}

// One dense piece [begin, end) of tensor t.
template <typename T, class Update>
void update_piece(const Update& u, const TensorLists& l, int64_t t, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, BFloat16> && kBf16InRegisters) {
    if (l.storage.plain(Dtype::kBFloat16)) {
      update_piece<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
    } else if (direct_param_mode(l, begin, end)) {
      update_piece_param(u, l, t, begin, end, std::make_index_sequence<Update::kStates - 1>{});
    } else {
      update_piece_blocked<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
    }
  } else if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    update_piece_blocked<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
  } else if constexpr (std::is_same_v<T, float>) {
    if (kBf16InRegisters && l.storage.state_dtype == Dtype::kBFloat16 && !l.storage.state_stochastic) {
      update_piece<T, BFloat16>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
    } else if (l.storage.state_dtype != Dtype::kFloat32) {
      update_piece_states_blocked(u, l, t, begin, end, std::make_index_sequence<Update::kStates - 1>{});
    } else {
      update_piece<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
    }
  } else {
    update_piece<T>(u, l, t, begin, end, std::make_index_sequence<Update::kStates>{});
  }
}

// Runtime choices become template arguments here, once per call, so the
// inner loop has no branches.
template <class Fn>
void with_dtype(Dtype d, Fn&& fn) {
  switch (d) {
    case Dtype::kFloat32: fn(float{}); break;
    case Dtype::kFloat64: fn(double{}); break;
    case Dtype::kBFloat16: fn(BFloat16{}); break;
    case Dtype::kFloat16: fn(Half{}); break;
    case Dtype::kQuant8: break;  // a state dtype only: params are never 8-bit
  }
}

void adam(const TensorLists& l, const AdamArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_adam_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        const math::AdamStep<M> step{static_cast<M>(a.step[t].neg_step_size),
                                     static_cast<M>(a.step[t].inv_bias_correction2_sqrt)};
        update_piece<T>(Update(a.hyper, step), l, t, b, e);
      });
    });
  });
}

void sgd(const TensorLists& l, const SgdArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    const bool torch_momentum = a.momentum == math::Momentum::kClassic || a.momentum == math::Momentum::kNesterov;
    with_sgd_update<M>(a, [&](auto later, auto first) {
      const typename decltype(later)::Update later_update(a.hyper);
      const typename decltype(first)::Update first_update(a.hyper);
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        if (torch_momentum && a.first_step[t]) {
          update_piece<T>(first_update, l, t, b, e);
        } else {
          update_piece<T>(later_update, l, t, b, e);
        }
      });
    });
  });
}

void adagrad(const TensorLists& l, const AdagradArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_adagrad_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        update_piece<T>(Update(a.hyper, static_cast<M>(a.neg_clr[t])), l, t, b, e);
      });
    });
  });
}

void rmsprop(const TensorLists& l, const RmspropArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_rmsprop_update<M>(a, [&](auto variant) {
      const typename decltype(variant)::Update update(a.hyper);
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        update_piece<T>(update, l, t, b, e);
      });
    });
  });
}

void traffic(const TensorLists& l, const TrafficArgs& a, int64_t slot_begin, int64_t slot_end) {
  with_dtype(l.dtype, [&](auto tag) {
    using T = decltype(tag);
    using M = typename MathType<T>::type;
    with_traffic_update<M>(a, [&](auto variant) {
      using Update = typename decltype(variant)::Update;
      for_each_piece(l, slot_begin, slot_end, [&](int64_t t, int64_t b, int64_t e) {
        update_piece<T>(Update{}, l, t, b, e);
      });
    });
  });
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{FUSEDOPT_ISA_NAME, &adam, &sgd, &adagrad, &rmsprop, &traffic};
  return t;
}

}  // namespace FUSEDOPT_ISA
}  // namespace cpu
}  // namespace fusedopt
