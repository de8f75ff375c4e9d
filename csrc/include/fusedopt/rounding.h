// Writing an update back to 16-bit storage, shared by the CPU and CUDA
// kernels: round to nearest even (what torch does), stochastic rounding from
// a counter-based generator, and the bfloat16 residual of compensated params.
// Branch-free, on raw bits, so the CPU loops vectorize.
//
// Stochastic rounding rounds x up to the next representable value with
// probability (x - below) / (above - below), so E[round(x)] = x: updates
// smaller than half an ulp survive on average instead of vanishing. Its
// random bits come from a hash of (key, counter): key names the tensor, the
// step and the stream (param or which state), counter the element's index in
// the whole (unsharded) tensor. The bits are therefore the same for any thread
// count, instruction set, chunking or world size, and a resumed run
// reproduces an uninterrupted one bit for bit.
#pragma once

#include <cstdint>

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

// A 32-bit mix with full avalanche (Wellons' "lowbias32"). U is uint32_t, or
// on the CPU lanes of it (cpu/lanes.h) that wrap alike.
template <typename U>
FUSEDOPT_HD U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// 32 random bits for element `counter` of the stream named by `key`: two
// rounds of mix32, the key's halves entering before each, the counter's high
// half (tensors of 2^32 elements or more) in the second.
FUSEDOPT_HD uint32_t random_bits(uint64_t key, uint64_t counter) {
  const uint32_t first = mix32(static_cast<uint32_t>(counter) ^ static_cast<uint32_t>(key));
  return mix32(first ^ static_cast<uint32_t>(counter >> 32) ^ static_cast<uint32_t>(key >> 32) ^ 0x9e3779b9u);
}

// Bits random bits for element `counter`, where one hash serves 32 / Bits
// elements: part counter % (32 / Bits) of random_bits(key, counter / (32 / Bits)),
// the lowest part for the first counter.
template <uint32_t Bits>
FUSEDOPT_HD uint32_t random_part(uint64_t key, uint64_t counter) {
  constexpr uint64_t kParts = 32 / Bits;
  return (random_bits(key, counter / kParts) >> (Bits * static_cast<uint32_t>(counter % kParts))) & ((1u << Bits) - 1u);
}

// The 16 bits that stochastic rounding to bfloat16 adds below the kept ones,
// half a hash (the hash was most of a stochastic bfloat16 step's compute on
// the CPU). float16's rounding takes 24 bits: a hash per element.
FUSEDOPT_HD uint32_t bf16_random_bits(uint64_t key, uint64_t counter) { return random_part<16>(key, counter); }

// The random bits of element `counter` for stochastic rounding to bfloat16
// (bfloat16 = true) or float16.
FUSEDOPT_HD uint32_t rounding_random_bits(bool bfloat16, uint64_t key, uint64_t counter) {
  return bfloat16 ? bf16_random_bits(key, counter) : random_bits(key, counter);
}

// The key of one stream of one tensor at one step (host side, once per
// tensor and step; or per block on a GPU whose step counts live there).
FUSEDOPT_HD uint64_t stream_key(uint64_t seed, uint64_t tensor, uint64_t step, uint32_t stream) {
  uint64_t h = seed ^ (0x9e3779b97f4a7c15ull * (tensor + 1));
  h ^= (step + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull;
  h ^= static_cast<uint64_t>(stream) << 56;
  h = (h ^ (h >> 31)) * 0x94d049bb133111ebull;
  return h ^ (h >> 29);
}

// Streams of one tensor: the param, then each state slot by its index.
constexpr uint32_t kParamStream = 0;

FUSEDOPT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  __builtin_memcpy(&b, &f, sizeof b);
  return b;
#endif
}

FUSEDOPT_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, sizeof f);
  return f;
#endif
}

// Rounding a float's bits to bfloat16, nearest even, before the shift that
// keeps the high half: below half an ulp nothing carries into it, above half
// one, and a tie carries only into an odd kept value. U is uint32_t, or on the
// CPU lanes of it (their vector roundings use this one). Wrong for NaN only.
template <typename U>
FUSEDOPT_HD U bf16_nearest_carry(U bits) {
  return bits + 0x7FFFu + ((bits >> 16) & 1u);
}

// bfloat16 bits of x, rounded to nearest even; NaN to the quiet NaN (as c10::BFloat16).
FUSEDOPT_HD uint16_t bf16_nearest(float x) {
  const uint32_t rounded = bf16_nearest_carry(float_bits(x)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7FC0u : rounded);
}

// bfloat16 bits of x, rounded up in magnitude with probability equal to the
// dropped fraction: adding 16 uniform bits below the kept ones carries into
// them exactly that often. Inf stays Inf (its low bits are zero); NaN stays NaN.
FUSEDOPT_HD uint16_t bf16_stochastic(float x, uint32_t random) {
  const uint32_t rounded = (float_bits(x) + (random & 0xFFFFu)) >> 16;
  return static_cast<uint16_t>(x != x ? 0x7FC0u : rounded);
}

FUSEDOPT_HD float bf16_to_float(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

// IEEE binary16 -> binary32, exact. Normal numbers: move exponent and
// mantissa into place and rescale by 2^-112 (which also maps Inf/NaN
// exponents to Inf/NaN). Subnormals: build 0.5 + m * 2^-24 and subtract 0.5.
FUSEDOPT_HD float fp16_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normal = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_bits(subnormal) : float_bits(normal);
  return bits_float(sign | magnitude);
}

// binary32 -> binary16, rounded to nearest even by the float addition that
// aligns the mantissa (scaling by 2^112 * 2^-110 first sends overflow to Inf);
// NaN becomes the quiet NaN 0x7E00 with its sign.
FUSEDOPT_HD uint16_t fp16_nearest(float x) {
  const uint32_t w = float_bits(x);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  const float base = (bits_float(w & 0x7FFFFFFFu) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t bits = float_bits(bits_float((bias >> 1) + 0x07800000u) + base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// float16 bits of x rounded stochastically: |x| = (n + f) * ulp with n whole
// and 0 <= f < 1 on float16's grid (ulp = 2^(e - 10), and 2^-24 below the
// normal range), rounded to (n + 1) * ulp when 24 random bits fall below f.
// Every step is exact in float32; the result is on the grid, so the final
// conversion is exact too (or overflows to Inf past 65504).
FUSEDOPT_HD uint16_t fp16_stochastic(float x, uint32_t random) {
  const uint32_t magnitude = float_bits(x) & 0x7FFFFFFFu;
  uint32_t exponent = magnitude >> 23;                // biased float32 exponent
  exponent = exponent < 113u ? 113u : exponent;       // float16's smallest normal exponent, -14
  exponent = exponent > 142u ? 142u : exponent;       // and its largest, 15
  const float ulp = bits_float((exponent - 10u) << 23);
  const float inv_ulp = bits_float((254u - (exponent - 10u)) << 23);
  const float q = bits_float(magnitude) * inv_ulp;
  const float whole = floor_(q);
  const float up = static_cast<float>(random >> 8) * 0x1.0p-24f < q - whole ? 1.0f : 0.0f;
  const float rounded = (whole + up) * ulp;
  const uint16_t bits = fp16_nearest(rounded);
  const uint16_t sign = static_cast<uint16_t>((float_bits(x) >> 16) & 0x8000u);
  return x != x ? fp16_nearest(x) : static_cast<uint16_t>(bits | sign);
}

// A compensated param: the value is param + residual, both stored in 16
// bits, the residual in bfloat16 (its 8 exponent bits keep a residual far
// below the param's ulp). split() writes the param rounded to nearest and
// what that rounding dropped, itself rounded to bfloat16: about 16
// significant bits in all, against 8 for bfloat16 alone.
template <bool Half>
FUSEDOPT_HD void split_compensated(float x, uint16_t& param, uint16_t& residual) {
  param = Half ? fp16_nearest(x) : bf16_nearest(x);
  const float kept = Half ? fp16_to_float(param) : bf16_to_float(param);
  const float dropped = x - kept;
  residual = bf16_nearest(dropped == dropped ? dropped : 0.0f);
}

}  // namespace math
}  // namespace fusedopt
