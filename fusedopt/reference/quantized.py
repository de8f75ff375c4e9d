"""Readable reference of fusedopt's blockwise 8-bit states (docs/quantized.md),
computed as the kernels compute them (csrc/include/fusedopt/quantize.h), so
codes and absmaxes agree bit for bit.

A state of n elements is one uint8 tensor of blocks(n) * 260 bytes: the codes
of blocks(n) * 256 elements (a tail block padded with zero codes), then one
float32 absmax per block of 256. A code is a "dynamic tree" value: its
magnitude index k has its leading 1-bit at position i, which picks the decade
[10^(i - D), 10^(i - D + 1)) of |x| / absmax * vmax, and its other i bits a
linear step of that decade; signed states (momentum, m) have D = 7 decades and
a sign bit, non-negative ones (v, sums of squares) D = 8. A value is coded by
the step that holds it and decoded to the step's midpoint; 0 is code 0, and a
positive non-negative value never becomes 0.
"""
import torch

BLOCK = 256
BLOCK_BYTES = BLOCK + 4


def blocks(n):
    return (n + BLOCK - 1) // BLOCK


def packed_bytes(n):
    """Bytes of the 8-bit state of an n-element tensor."""
    return blocks(n) * BLOCK_BYTES


def _tables(decades):
    """(low, slope, offset, first, width, vmax) of each decade, in float32, as quantize.h's DecadeCode."""
    low, slope, offset, first, width = [], [], [], [], []
    value = 1.0
    for _ in range(decades):
        value /= 10.0
    for i in range(decades):
        steps = float(1 << i)
        low.append(value)
        slope.append(steps / (9.0 * value))
        offset.append(steps / 9.0)
        first.append(value * (1.0 + 4.5 / steps))
        width.append(9.0 * value / steps)
        value *= 10.0
    f32 = [torch.tensor(t, dtype=torch.float32) for t in (low, slope, offset, first, width)]
    vmax = f32[3][-1] + f32[4][-1] * torch.tensor(float((1 << (decades - 1)) - 1), dtype=torch.float32)
    return (*f32, vmax)


SIGNED, UNSIGNED = _tables(7), _tables(8)


def _encode_magnitude(y, tables, keep_positive):
    low, slope, offset, _, _, _ = tables
    decade = (y.unsqueeze(-1) >= low[1:]).sum(-1)  # the last decade whose low end y reaches
    base = (1 << decade).to(torch.float32)
    j = torch.floor(y * slope[decade] - offset[decade])
    j = torch.where(j >= 0, j, torch.zeros_like(j))
    j = torch.where(j <= base - 1, j, base - 1)
    k = (base + j).to(torch.int64)
    below = ((y > 0) & keep_positive).to(torch.int64)
    return torch.where(y >= low[0], k, below)


def _decode_magnitude(k, tables):
    _, _, _, first, width, _ = tables
    decade = (k.unsqueeze(-1) >= (1 << torch.arange(1, len(first)))).sum(-1)
    value = first[decade] + width[decade] * (k - (1 << decade)).to(torch.float32)
    return torch.where(k == 0, torch.zeros_like(value), value)


def quantize(x, signed):
    """The 8-bit state (uint8, packed_bytes(n)) of x (any shape, float)."""
    x = x.detach().reshape(-1).float()
    n = x.numel()
    padded = torch.zeros(blocks(n) * BLOCK, dtype=torch.float32, device=x.device)
    padded[:n] = x
    view = padded.view(-1, BLOCK)
    nan = torch.isnan(view).any(dim=1)
    absmax = view.abs().amax(dim=1)
    absmax = torch.where(nan, torch.full_like(absmax, float("nan")), absmax)
    tables = SIGNED if signed else UNSIGNED
    vmax = tables[5]
    inv = torch.where(absmax > 0, vmax / absmax, torch.zeros_like(absmax)).unsqueeze(1)
    if signed:
        k = _encode_magnitude(view.abs() * inv, tables, False)
        codes = k | torch.where(view < 0, 0x80, 0)
    else:
        codes = _encode_magnitude(view * inv, tables, True)
    out = torch.empty(packed_bytes(n), dtype=torch.uint8, device=x.device)
    out[:blocks(n) * BLOCK] = codes.to(torch.uint8).reshape(-1)
    out[blocks(n) * BLOCK:] = absmax.view(torch.uint8)
    return out


def dequantize(packed, shape, signed):
    """The float32 values of an 8-bit state of a tensor of `shape`."""
    n = int(torch.Size(shape).numel())
    codes = packed[:blocks(n) * BLOCK].to(torch.int64).view(-1, BLOCK)
    absmax = packed[blocks(n) * BLOCK:].view(torch.float32)
    tables = SIGNED if signed else UNSIGNED
    scale = (absmax / tables[5]).unsqueeze(1)
    if signed:
        values = _decode_magnitude(codes & 0x7F, tables) * scale
        values = torch.where(codes >= 0x80, -values, values)
    else:
        values = _decode_magnitude(codes, tables) * scale
    return values.reshape(-1)[:n].reshape(shape)
