// Blockwise 8-bit optimizer states (Dettmers et al., 2022), shared by the CPU
// and CUDA kernels. A state of n elements is stored as one uint8 tensor of
// blocks(n) * 260 bytes: blocks(n) * 256 codes, then one float32 absmax per
// block of 256 elements. A code is a small float relative to its block's
// absmax: signed states (momentum, m) the sign and E4M3 of
// x / absmax * 1.875; non-negative ones (v, sums of squares) E5M3 of
// x / absmax * 61440, whose 5 exponent bits cover the 32 binary orders of
// magnitude a v spans under its block's absmax.
//
// Both are the top bits of an IEEE float16: the value is rounded to float16
// (nearest even) and then to 3 mantissa bits, which a CPU does for 16 values in
// a few instructions (csrc/cpu/quant_codes.h) and
// fusedopt/reference/quantized.py with torch ops, bit for bit. Signed codes
// round to nearest even; non-negative ones stochastically (rounding.h's
// counter-based bits), because they hold slow averages (Adam's v moves by
// 0.1% a step, far less than half a code step) and sums: rounded to nearest,
// such a state stops moving and lags its true value, which made Adam's
// updates 3% too large on the demo model (docs/quantized.md). 0 stays 0, a NaN
// codes as 0 (its block's absmax is NaN, and so is every decoded value of the
// block), and a positive non-negative state never becomes 0 (a v coded as 0
// would turn m / sqrt(v) into m / eps): it is raised to the smallest code.
#pragma once

#include <cstdint>

#include "fusedopt/common.h"
#include "fusedopt/rounding.h"

namespace fusedopt {
namespace math {

constexpr int kQuantBlock = 256;
constexpr int kQuantBlockBytes = kQuantBlock + 4;  // codes + the block's float32 absmax

constexpr float kSignedMax = 1.875f;            // E4M3's largest value, float16 0x3F80 (code 0x7F)
constexpr float kUnsignedMax = 61440.0f;        // E5M3's, float16 0x7B80 (code 0xF7)
constexpr float kSmallestUnsigned = 0x1.0p-17f;  // E5M3's smallest positive value, float16 0x0080
constexpr uint32_t kFloat16Inf = 0x7C00u;

FUSEDOPT_HD int64_t quant_blocks(int64_t n) { return (n + kQuantBlock - 1) / kQuantBlock; }

// What a block's values are multiplied by before coding (0 for an all-zero
// block), and what decoded codes are multiplied by.
FUSEDOPT_HD float encode_scale(bool is_signed, float absmax) {
  return absmax > 0.0f ? (is_signed ? kSignedMax : kUnsignedMax) / absmax : 0.0f;
}
FUSEDOPT_HD float decode_scale(bool is_signed, float absmax) {
  return absmax / (is_signed ? kSignedMax : kUnsignedMax);
}

// |h| (float16 bits) with its low 7 bits rounded off and shifted down, at
// most Max; a NaN's code is 0. `carry` is added below the kept bits: a random
// number under 128 rounds stochastically, 63 plus the kept ulp's parity to
// nearest even.
template <uint32_t Max>
FUSEDOPT_HD uint32_t round_float16_magnitude(uint32_t h, uint32_t carry) {
  const uint32_t magnitude = h & 0x7FFFu;
  uint32_t k = (magnitude + carry) >> 7;
  k = k < Max ? k : Max;
  return magnitude > kFloat16Inf ? 0u : k;
}

FUSEDOPT_HD uint8_t encode_signed(float x, float inv) {
  const uint32_t h = fp16_nearest(x * inv);
  const uint32_t k = round_float16_magnitude<0x7Fu>(h, 0x3Fu + ((h >> 7) & 1u));
  const uint32_t sign = (h & 0x7FFFu) > kFloat16Inf ? 0u : (h >> 8) & 0x80u;
  return static_cast<uint8_t>(k | sign);
}

// The random byte of element e of a stream (rounding.h's key and counter),
// a quarter of a hash; a code's rounding takes its low 7 bits.
FUSEDOPT_HD uint32_t code_random_byte(uint64_t key, uint64_t e) { return random_part<8>(key, e); }

// random: the element's code_random_byte.
FUSEDOPT_HD uint8_t encode_unsigned(float x, float inv, uint32_t random) {
  float y = x * inv;
  y = y > 0.0f && y < kSmallestUnsigned ? kSmallestUnsigned : y;
  return static_cast<uint8_t>(round_float16_magnitude<0xF7u>(fp16_nearest(y), random & 0x7Fu));
}

FUSEDOPT_HD float decode_signed(uint8_t code, float scale) {
  const uint32_t h = ((code & 0x7Fu) << 7) | ((code & 0x80u) << 8);
  return fp16_to_float(static_cast<uint16_t>(h)) * scale;
}

FUSEDOPT_HD float decode_unsigned(uint8_t code, float scale) {
  return fp16_to_float(static_cast<uint16_t>(static_cast<uint32_t>(code) << 7)) * scale;
}

}  // namespace math
}  // namespace fusedopt
