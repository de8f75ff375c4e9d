"""Readable reference of fusedopt's blockwise 8-bit states (docs/quantized.md),
computed as the kernels compute them (csrc/include/fusedopt/quantize.h), so
codes and absmaxes agree bit for bit.

A state of n elements is one uint8 tensor of blocks(n) * 260 bytes: the codes
of blocks(n) * 256 elements (a tail block padded with zero codes), then one
float32 absmax per block of 256. A code is a small float relative to its
block's absmax:

- signed states (momentum, m): sign and E4M3 (4 exponent, 3 mantissa bits) of
  x / absmax * 1.875, so the absmax is the largest code, 1.875;
- non-negative states (v, sums of squares): E5M3 of x / absmax * 61440, whose
  5 exponent bits cover the 32 binary orders of magnitude v spans.

Both formats are the top bits of an IEEE float16 (sign, 5 exponent bits, 10
mantissa bits): the value is rounded to float16 (nearest even), then to 3
mantissa bits, so subnormals below 2^-14 come with the format. Signed codes
round to nearest even. Non-negative ones round stochastically in the
optimizer step (7 random bits, low_precision.code_random_bytes, added below
the kept bits): they hold slow averages and sums whose per-step change is far under half a code
step, which rounding to nearest would drop again and again. 0 stays 0, a
positive non-negative value never becomes 0 (it is raised to the smallest code
first: a v coded as 0 would turn m / sqrt(v) into m / eps), and a NaN codes as
0 (its block's absmax is NaN, which every decoded value of the block then
carries).
"""
import torch

BLOCK = 256
BLOCK_BYTES = BLOCK + 4
SIGNED_MAX = 1.875  # E4M3's largest value, float16 bits 0x3F80 (code 0x7F)
UNSIGNED_MAX = 61440.0  # E5M3's largest value, float16 bits 0x7B80 (code 0xF7)
SMALLEST_UNSIGNED = 2.0 ** -17  # E5M3's smallest positive value (float16 bits 0x0080)


def blocks(n):
    return (n + BLOCK - 1) // BLOCK


def packed_bytes(n):
    """Bytes of the 8-bit state of an n-element tensor."""
    return blocks(n) * BLOCK_BYTES


def _f32(value):
    return torch.tensor(value, dtype=torch.float32)


def _rounded_float16_bits(y, largest, random=None):
    """|float16(y)| with its lowest 7 bits rounded off (to nearest even, or
    stochastically with the low 7 bits of `random`), shifted down, at most
    `largest`; a NaN's code is 0."""
    magnitude = y.to(torch.float16).view(torch.int16).to(torch.int32) & 0x7FFF
    if random is None:
        carry = 63 + ((magnitude >> 7) & 1)
    else:
        carry = (random & 0x7F).to(torch.int32)
    kept = (magnitude + carry) >> 7
    return torch.where(magnitude > 0x7C00, 0, kept.clamp(max=largest))


def encode(x, absmax, signed, random=None):
    """Codes (int32, 0..255) of x (float32) in blocks with these absmaxes
    (broadcast); non-negative codes round stochastically where `random` (a
    random byte per element) is given, to nearest where not."""
    if signed:
        inv = torch.where(absmax > 0, _f32(SIGNED_MAX) / absmax, _f32(0.0))
        y = x * inv
        codes = _rounded_float16_bits(y, 0x7F)
        negative = y.to(torch.float16).view(torch.int16) < 0  # the sign of float16(y): -0 included
        return torch.where(torch.isnan(y), 0, codes | torch.where(negative, 0x80, 0))
    inv = torch.where(absmax > 0, _f32(UNSIGNED_MAX) / absmax, _f32(0.0))
    y = x * inv
    y = torch.where(y > 0, torch.maximum(y, _f32(SMALLEST_UNSIGNED)), y)
    return _rounded_float16_bits(y, 0xF7, random)


def decode(codes, absmax, signed):
    """float32 values of codes (int32) in blocks with these absmaxes (broadcast)."""
    if signed:
        bits = ((codes & 0x7F) << 7) | ((codes & 0x80) << 8)
        value = bits.to(torch.int16).view(torch.float16).float()
        return value * (absmax / _f32(SIGNED_MAX))
    value = (codes << 7).to(torch.int16).view(torch.float16).float()
    return value * (absmax / _f32(UNSIGNED_MAX))


def quantize(x, signed, random=None):
    """The 8-bit state (uint8, packed_bytes(n)) of x (any shape, float).
    random: for a non-negative state, a random byte per element (int64 tensor
    of x's numel, low_precision.code_random_bytes) to round as the optimizer step does; None
    rounds to nearest (a one-time conversion)."""
    x = x.detach().reshape(-1).float()
    n = x.numel()
    padded = torch.zeros(blocks(n) * BLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = x
    view = padded.view(-1, BLOCK)
    nan = torch.isnan(view).any(dim=1)
    absmax = view.abs().amax(dim=1)
    absmax = torch.where(nan, torch.full_like(absmax, float("nan")), absmax)
    if random is not None:
        bits = torch.zeros(blocks(n) * BLOCK, dtype=torch.int64, device=x.device)
        bits[:n] = random.reshape(-1)
        random = bits.view(-1, BLOCK)
    codes = encode(view, absmax.unsqueeze(1), signed, random)
    out = torch.empty(packed_bytes(n), dtype=torch.uint8, device=x.device)
    out[:blocks(n) * BLOCK] = codes.to(torch.uint8).reshape(-1)
    out[blocks(n) * BLOCK:] = absmax.view(torch.uint8)
    return out


def dequantize(packed, shape, signed):
    """The float32 values of an 8-bit state of a tensor of `shape`."""
    n = int(torch.Size(shape).numel())
    codes = packed[:blocks(n) * BLOCK].to(torch.int32).view(-1, BLOCK)
    absmax = packed[blocks(n) * BLOCK:].view(torch.float32)
    return decode(codes, absmax.unsqueeze(1), signed).reshape(-1)[:n].reshape(shape)
