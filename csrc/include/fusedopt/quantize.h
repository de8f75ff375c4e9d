// Blockwise 8-bit optimizer states (Dettmers et al., 2022), shared by the CPU
// and CUDA kernels. A state of n elements is stored as one uint8 tensor of
// blocks(n) * 260 bytes: blocks(n) * 256 codes, then one float32 absmax per
// block of 256 elements. Each code is a "dynamic tree" value (bitsandbytes'
// dynamic map): a magnitude index k whose leading 1-bit at position i picks
// the decade [10^(i-D), 10^(i-D+1)) of |x| / absmax * vmax and whose other i
// bits a linear step within it (2^i steps: fine near the block's absmax,
// coarse but still relative far below it). Signed states (momentum, m) use 7
// decades and a sign bit; non-negative ones (v, sums of squares) 8 decades.
//
// Quantizing takes the interval that holds the value and reconstructs its
// midpoint, computed with a few compares, selects and one floor, so it
// vectorizes and is the same on every ISA and in the reference
// (fusedopt/reference/quantized.py); zero is exactly code 0, and a positive
// non-negative state never becomes 0 (a v quantized to 0 would turn m / sqrt(v)
// into m / eps).
#pragma once

#include <cstdint>

#include "fusedopt/common.h"

namespace fusedopt {
namespace math {

constexpr int kQuantBlock = 256;
constexpr int kQuantBlockBytes = kQuantBlock + 4;  // codes + the block's float32 absmax

FUSEDOPT_HD int64_t quant_blocks(int64_t n) { return (n + kQuantBlock - 1) / kQuantBlock; }

// The decade tables of a code with D decades: decade i covers [low[i], 10 low[i])
// with low[i] = 10^(i - D); a magnitude y in it has step index
// floor(y * slope[i] - offset[i]) (= floor((y - low) / (9 low) * 2^i)) and the
// step index j decodes to first[i] + width[i] * j (the midpoint of step j).
template <int D>
struct DecadeCode {
  static_assert(D >= 2 && D <= 8, "the SIMD kernels look decades up in 8-lane tables");
  static constexpr int kDecades = D;
  static constexpr uint32_t kMaxIndex = (1u << D) - 1;
  // 8 entries each (those past D unused) so a SIMD kernel loads a whole table.
  float low[8], slope[8], offset[8], first[8], width[8];
  float vmax;  // the largest value: the block's absmax maps to it

  constexpr DecadeCode() : low(), slope(), offset(), first(), width(), vmax(0) {
    double l = 1.0;
    for (int i = 0; i < D; ++i) l /= 10.0;
    for (int i = 0; i < D; ++i, l *= 10.0) {
      const double steps = static_cast<double>(1u << i);
      low[i] = static_cast<float>(l);
      slope[i] = static_cast<float>(steps / (9.0 * l));
      offset[i] = static_cast<float>(steps / 9.0);
      first[i] = static_cast<float>(l * (1.0 + 4.5 / steps));
      width[i] = static_cast<float>(9.0 * l / steps);
    }
    vmax = first[D - 1] + width[D - 1] * static_cast<float>((1u << (D - 1)) - 1);
  }
};

using SignedCode = DecadeCode<7>;    // 127 magnitudes and a sign
using UnsignedCode = DecadeCode<8>;  // 255 magnitudes

// The magnitude index of y >= 0 (y = |x| / absmax * vmax): 0 for y below the
// lowest decade, and, with KeepPositive, 1 rather than 0 for any y > 0.
template <class Code, bool KeepPositive>
FUSEDOPT_HD uint32_t encode_magnitude(const Code& c, float y) {
  float slope = c.slope[0], offset = c.offset[0];
  uint32_t base = 1;
  for (int i = 1; i < Code::kDecades; ++i) {
    const bool in = y >= c.low[i];
    slope = in ? c.slope[i] : slope;
    offset = in ? c.offset[i] : offset;
    base = in ? (1u << i) : base;
  }
  float j = floor_(y * slope - offset);
  j = j >= 0.0f ? j : 0.0f;  // NaN too: its code is decided below
  j = j <= static_cast<float>(base - 1) ? j : static_cast<float>(base - 1);
  const uint32_t k = base + static_cast<uint32_t>(static_cast<int32_t>(j));
  const uint32_t below = KeepPositive && y > 0.0f ? 1u : 0u;
  return y >= c.low[0] ? k : below;
}

// The CPU kernels run this 8 codes at a time with AVX2 intrinsics
// (decode_codes in kernels_impl.h), where the decade is the exponent of
// float(k) and the tables are permuted in registers.
template <class Code>
FUSEDOPT_HD float decode_magnitude(const Code& c, uint32_t k) {
  float first = c.first[0], width = c.width[0];
  int32_t base = 1;
  for (int i = 1; i < Code::kDecades; ++i) {
    const bool in = k >= (1u << i);
    first = in ? c.first[i] : first;
    width = in ? c.width[i] : width;
    base = in ? (1 << i) : base;
  }
  const float value = first + width * static_cast<float>(static_cast<int32_t>(k) - base);
  return k != 0 ? value : 0.0f;
}

// Codes of one element: x * inv (inv = vmax / absmax of its block).
FUSEDOPT_HD uint8_t encode_signed(const SignedCode& c, float x, float inv) {
  const float y = fabs_(x) * inv;
  const uint32_t k = encode_magnitude<SignedCode, false>(c, y);
  return static_cast<uint8_t>(k | (x < 0.0f ? 0x80u : 0u));
}

FUSEDOPT_HD uint8_t encode_unsigned(const UnsignedCode& c, float x, float inv) {
  return static_cast<uint8_t>(encode_magnitude<UnsignedCode, true>(c, x * inv));
}

// The value of a code, given scale = absmax / vmax of its block.
FUSEDOPT_HD float decode_signed(const SignedCode& c, uint8_t code, float scale) {
  const float sign = 1.0f - 2.0f * static_cast<float>(code >> 7);
  return decode_magnitude(c, code & 0x7Fu) * scale * sign;
}

FUSEDOPT_HD float decode_unsigned(const UnsignedCode& c, uint8_t code, float scale) {
  return decode_magnitude(c, code) * scale;
}

}  // namespace math
}  // namespace fusedopt
