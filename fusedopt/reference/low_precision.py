"""Readable reference of fusedopt's low-precision storage (docs/precision.md):
stochastic rounding with its counter-based generator, compensated params,
float32 master params and 16-bit states, written with integer tensor ops so
that they give the native kernels' bits (csrc/include/fusedopt/rounding.h).

    step(update, param, grad, states, ...)   runs any of this package's updates
                                              (adam, sgd, ...) on float32 copies
                                              and writes them back in the modes
"""
import torch

from . import quantized

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF


def mix32(x):
    """Wellons' lowbias32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def random_bits(key, index):
    """32 random bits (as int64 values) for each element index (int64 tensor) of stream `key`."""
    low = index & M32
    high = (index >> 32) & M32
    first = mix32(low ^ (key & M32))
    return mix32(first ^ high ^ ((key >> 32) & M32) ^ 0x9E3779B9)


def random_part(key, index, bits):
    """`bits` random bits for each element index, one hash serving 32 // bits elements: part
    index % (32 // bits) of random_bits(key, index // (32 // bits)), the lowest for the first index."""
    parts = 32 // bits
    return (random_bits(key, index // parts) >> (bits * (index % parts))) & ((1 << bits) - 1)


def bf16_random_bits(key, index):
    """The 16 random bits of stochastic rounding to bfloat16 for each element index: half a hash."""
    return random_part(key, index, 16)


def code_random_bytes(key, index):
    """The random byte of each element index with which 8-bit non-negative states are coded
    (quantized.quantize's `random`): a quarter of a hash."""
    return random_part(key, index, 8)


def stream_key(seed, tensor, step, stream=0):
    """The key of the param stream of one tensor at one step (its states' streams: stream_key_of_slot)."""
    h = (seed ^ (0x9E3779B97F4A7C15 * (tensor + 1))) & M64
    h ^= ((step + 0x632BE59BD9B4E019) * 0xBF58476D1CE4E5B9) & M64
    h ^= (stream << 56) & M64
    h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & M64
    return h ^ (h >> 29)


def global_index(numel, index_map=None):
    """Each element's index in the whole tensor: base + (i // row_local) * row_global + i % row_local."""
    i = torch.arange(numel, dtype=torch.int64)
    if index_map is None:
        return i
    base, row_local, row_global = index_map
    return base + (i // row_local) * row_global + i % row_local


def _bits(x):
    return x.contiguous().view(torch.int32).to(torch.int64) & M32


def bf16_stochastic(x, random):
    """x (float32) rounded to bfloat16, up in magnitude with probability equal to the dropped fraction:
    16 random bits added below the kept ones carry into them exactly that often."""
    rounded = ((_bits(x) + (random & 0xFFFF)) >> 16) & 0xFFFF
    rounded = torch.where(torch.isnan(x), torch.full_like(rounded, 0x7FC0), rounded)
    return _from_bits16(rounded, torch.bfloat16)


def fp16_stochastic(x, random):
    """x (float32) rounded to float16 stochastically: |x| = (n + f) ulp on float16's grid, rounded to
    (n + 1) ulp when 24 random bits fall below f."""
    magnitude = x.abs()
    exponent = ((_bits(magnitude) >> 23) & 0xFF).clamp(113, 142)
    ulp = torch.pow(2.0, (exponent - 127 - 10).to(torch.float32))
    q = magnitude * (1.0 / ulp)
    whole = torch.floor(q)
    up = ((random >> 8).to(torch.float32) * 2.0**-24 < q - whole).to(torch.float32)
    rounded = ((whole + up) * ulp).half()
    rounded = torch.where(torch.signbit(x), -rounded, rounded)
    return torch.where(torch.isnan(x), x.half(), rounded)


def _from_bits16(bits, dtype):
    return (bits - ((bits & 0x8000) << 1)).to(torch.int16).view(dtype)


def round_to(x, dtype, stochastic=False, key=0, index=None):
    """x (float32) stored in dtype: to nearest, or stochastically with the bits of (key, index)."""
    if dtype == torch.float32 or not stochastic:
        return x.to(dtype)
    if dtype == torch.bfloat16:
        return bf16_stochastic(x, bf16_random_bits(key, index).view(x.shape))
    return fp16_stochastic(x, random_bits(key, index).view(x.shape))


def split_compensated(x, dtype):
    """x (float32) as a 16-bit param rounded to nearest plus what that dropped, in bfloat16."""
    param = x.to(dtype)
    dropped = x - param.float()
    return param, torch.nan_to_num(dropped, nan=0.0, posinf=0.0, neginf=0.0).bfloat16()


def step(update, param, grad, states, *, param_precision="nearest", companion=None, stochastic_states=False,
         key=0, index=None, signs=(), **hyper):
    """One step of `update` (fusedopt.reference.adam, sgd, ...; called with the
    param, the grad, its states (None where absent) and **hyper) on float32
    copies of everything, written back as the modes say:

        nearest / stochastic   param rounded to nearest / stochastically
        compensated            param + companion (bfloat16 residual), split again
        master                 companion is the float32 master: updated, param = master
                                rounded to nearest
    16-bit states are written to nearest, or stochastically with stochastic_states
    (stream k for the k-th state of `states`); 8-bit states (uint8) are
    dequantized and quantized again (reference.quantized), signed or not as
    `signs` says for each state, the non-negative ones rounded stochastically
    (stream k too). key: the param stream's
    stream_key at this step; index: global_index of the param's elements."""
    if param_precision == "master":
        work = companion.clone()
    elif param_precision == "compensated":
        work = param.float() + companion.float()
    else:
        work = param.float()
    def widen(s, signed):
        if s is None:
            return None
        return quantized.dequantize(s, param.shape, signed) if s.dtype == torch.uint8 else s.float()

    signs = list(signs) + [True] * (len(states) - len(signs))
    work_states = [widen(s, signed) for s, signed in zip(states, signs)]
    update(work, grad.float(), *work_states, **hyper)
    if param_precision == "master":
        companion.copy_(work)
        param.copy_(work.to(param.dtype))
    elif param_precision == "compensated":
        kept, dropped = split_compensated(work, param.dtype)
        param.copy_(kept)
        companion.copy_(dropped)
    else:
        param.copy_(round_to(work, param.dtype, param_precision == "stochastic", key, index))
    slot = 0
    for s, w, signed in zip(states, work_states, signs):
        if s is None:
            continue
        slot += 1
        if s.dtype == torch.uint8:
            random = None if signed else code_random_bytes(stream_key_of_slot(key, slot), index)
            s.copy_(quantized.quantize(w, signed, random))
        else:
            s.copy_(round_to(w, s.dtype, stochastic_states, stream_key_of_slot(key, slot), index))


def stream_key_of_slot(key, slot):
    """The kernels' key of state slot `slot` (1, 2, ... in the update's slot order) given the param's."""
    return key ^ ((0x9E3779B97F4A7C15 * slot) & M64)
