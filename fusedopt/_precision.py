"""The low-precision options every fusedopt optimizer takes (docs/precision.md).

    param_precision    how a bfloat16/float16 param is kept between steps:
                       "nearest"      rounded to nearest even, as torch does
                       "stochastic"   rounded stochastically (unbiased)
                       "compensated"  plus a bfloat16 residual of what rounding dropped
                                      (state "param_residual", +2 bytes per param)
                       "master"       a float32 master copy (state "master_param",
                                      +4 bytes), the param written from it each step
    state_dtype        the optimizer states' dtype: None (the param's, as torch; float32
                       beside a master), torch.bfloat16, torch.float32, or "8bit":
                       blockwise 8-bit states (docs/quantized.md) for params of at
                       least quantize_threshold elements (default 4096)
    stochastic_states  bfloat16 states rounded stochastically too
    seed               stochastic rounding's seed; None: torch.initial_seed(), so it
                       follows torch.manual_seed

Float32 and float64 params are updated as usual whatever param_precision says;
state_dtype applies to float32, bfloat16 and float16 params.
"""
import torch

from . import _dtensor
from .reference import quantized as quantized_ref

PARAM_PRECISIONS = ("nearest", "stochastic", "compensated", "master")
STATE_DTYPES = {None: None, torch.bfloat16: "bfloat16", torch.float32: "float32", "bfloat16": "bfloat16",
                "float32": "float32", "8bit": "8bit", torch.uint8: "8bit"}
QUANTIZE_THRESHOLD = 4096
# The 8-bit code a group's uint8 states hold (docs/quantized.md), saved with the
# group: states saved under another code (the dynamic tree of fusedopt before
# 2026-11-28, whose groups have no such entry) would decode to wrong values,
# so they are refused.
QUANTIZE_CODE = "e4m3-e5m3"
LOW = (torch.bfloat16, torch.float16)
GROUP_DEFAULTS = dict(param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None)


def defaults(param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
             quantize_threshold=None):
    """The group entries of the options, checked (ValueError names the bad one);
    none at all for torch's behaviour, so that defaults, param_groups and
    state dicts are then exactly torch.optim's."""
    if param_precision not in PARAM_PRECISIONS:
        raise ValueError(f"Invalid param_precision: {param_precision!r}; expected one of {PARAM_PRECISIONS}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {state_dtype!r}; expected None, torch.bfloat16, torch.float32 or '8bit'")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"Invalid seed: {seed!r}; expected an int or None")
    if quantize_threshold is not None and (STATE_DTYPES[state_dtype] != "8bit" or not isinstance(
            quantize_threshold, int) or quantize_threshold < 0):
        raise ValueError(f"Invalid quantize_threshold: {quantize_threshold!r}; a whole number >= 0, "
                         "for state_dtype='8bit'")
    if param_precision == "nearest" and state_dtype is None and not stochastic_states and seed is None:
        return {}
    options = dict(param_precision=param_precision, state_dtype=STATE_DTYPES[state_dtype],
                   stochastic_states=bool(stochastic_states),
                   seed=torch.initial_seed() if seed is None else seed)
    if options["state_dtype"] == "8bit":
        options["quantize_threshold"] = QUANTIZE_THRESHOLD if quantize_threshold is None else quantize_threshold
        options["quantize_code"] = QUANTIZE_CODE
    return options


def check_quantize_code(state_dict):
    """ValueError for a state dict whose 8-bit states hold another code than this version's."""
    for index, group in enumerate(state_dict["param_groups"]):
        if group.get("state_dtype") != "8bit" or group.get("quantize_code") == QUANTIZE_CODE:
            continue
        states = state_dict["state"]
        if any(torch.is_tensor(v) and v.dtype == torch.uint8 for i in group["params"] for v in states.get(i, {}).values()):
            saved = group.get("quantize_code", "of fusedopt before 2026-11-28")
            raise ValueError(f"param_groups[{index}] holds 8-bit states in the code {saved!r}, not this version's "
                             f"{QUANTIZE_CODE!r}: decoded here they would be wrong. Convert them to float32 with "
                             "fusedopt.dequantized_state_dict in the version that saved them, and load that")


def is_default(group):
    return (group.get("param_precision", "nearest") == "nearest" and group.get("state_dtype") is None
            and not group.get("stochastic_states", False))


def mode(group, dtype):
    """The param_precision that applies to params of `dtype` in this group."""
    wanted = group.get("param_precision", "nearest")
    return wanted if dtype in LOW else "nearest"


def quantized(group, p):
    """Whether p's states are blockwise 8-bit (uint8 codes and block absmaxes)."""
    return (group.get("state_dtype") == "8bit" and p.dtype in (torch.float32,) + LOW
            and p.numel() >= group.get("quantize_threshold", QUANTIZE_THRESHOLD))


def state_dtype(group, p):
    """The dtype of p's optimizer states in this group (torch.uint8: 8-bit)."""
    if p.dtype not in (torch.float32,) + LOW:
        return p.dtype
    if quantized(group, p):
        return torch.uint8
    named = group.get("state_dtype")
    if named is not None and named != "8bit":
        return getattr(torch, named)
    return torch.float32 if mode(group, p.dtype) == "master" else p.dtype


def zeros(group, p):
    """A new state tensor for p (a DTensor for a DTensor p), in the group's state dtype."""
    dtype = state_dtype(group, p)
    if dtype == torch.uint8:  # never a DTensor p: FusedOptimizer._gather_buckets refuses those first
        return torch.zeros(quantized_ref.packed_bytes(p.numel()), dtype=torch.uint8, device=p.device)
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


def full(group, p, value, signed):
    """A new state tensor for p filled with value (Adagrad's initial sum)."""
    if state_dtype(group, p) == torch.uint8:
        return quantized_ref.quantize(torch.full(p.shape, float(value), device=p.device), signed)
    return torch.full_like(p, value, dtype=state_dtype(group, p), memory_format=torch.preserve_format)


def draws_bits(group, p, unsigned_states=()):
    """Whether stochastic rounding draws random bits for p: its param or its
    states are rounded so (8-bit non-negative states always are)."""
    return (mode(group, p.dtype) == "stochastic"
            or (group.get("stochastic_states", False) and state_dtype(group, p) in LOW)
            or (bool(unsigned_states) and quantized(group, p)))


def gather(optimizer, group, params, lists, state_keys):
    """Adds the bucket's low-precision lists and op arguments to `lists`
    (from the optimizer's _gather): the states converted to the group's state
    dtype (a torch.optim state dict loads as the params' dtype), master params
    or residuals, the ids and index maps stochastic rounding keys its bits by.
    state_keys maps each state list of `lists` to its state key."""
    dtype = params[0].dtype
    which = mode(group, dtype)
    for key, state_key in state_keys.items():
        for i, p in enumerate(params):
            if i >= len(lists[key]):
                break
            wanted = state_dtype(group, p)
            value = lists[key][i]
            # Only the cast of torch.optim's load_state_dict is undone; any other
            # dtype is left for the op to refuse.
            if wanted == torch.uint8 and value.is_floating_point() and value.shape == p.shape:
                signed = state_key not in optimizer._unsigned_states
                lists[key][i] = optimizer.state[p][state_key] = quantized_ref.quantize(value, signed)
            elif wanted != p.dtype and wanted != torch.uint8 and value.dtype == p.dtype:
                lists[key][i] = optimizer.state[p][state_key] = value.to(wanted)
    companions = []
    if which == "master":
        for p in params:
            state = optimizer.state[p]
            if "master_param" not in state:
                state["master_param"] = p.detach().clone(memory_format=torch.preserve_format).float()
            companions.append(state["master_param"])
    elif which == "compensated":
        for p in params:
            state = optimizer.state[p]
            if "param_residual" not in state:
                state["param_residual"] = torch.zeros_like(p, dtype=torch.bfloat16,
                                                           memory_format=torch.preserve_format)
            companions.append(state["param_residual"])
    lists["companions"] = companions
    args = {}
    p = params[0]
    default_states = torch.float32 if which == "master" else dtype
    effective = state_dtype(group, p)
    random = draws_bits(group, p, optimizer._unsigned_states)
    if which != "nearest" or effective != dtype or random:
        args = dict(param_precision=which, state_dtype=effective if effective != default_states else None,
                    stochastic_states=bool(group.get("stochastic_states", False)) and effective in LOW,
                    seed=int(group.setdefault("seed", torch.initial_seed())) & (2**63 - 1))
        if random:
            if "state_steps" not in lists:  # SGD keeps no step count: one for the keys (state "step")
                lists["state_steps"] = [optimizer.state[q].setdefault("step", torch.tensor(0.0)) for q in params]
            ids = optimizer._rng_ids()
            args["rng_ids"] = [ids[id(q)] for q in params]
            if _dtensor.is_dtensor(p):
                args["index_map"] = [n for q in params for n in _dtensor.index_map(q)]
    lists["precision"] = args
    return lists


def restore_dtypes(optimizer, saved_state):
    """torch.optim's load_state_dict casts every state to its param's dtype;
    states kept in another dtype by the group's options (float32 masters,
    bfloat16 residuals, bfloat16 or float32 states) get their saved values back."""
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    for index, saved in saved_state.items():
        if not isinstance(index, int) or index >= len(params):
            continue
        p, group = params[index]
        state = optimizer.state.get(p, {})
        wanted = {"master_param": torch.float32, "param_residual": torch.bfloat16}
        for key, value in saved.items():
            if key == "step" or key not in state or not torch.is_tensor(value):
                continue
            if value.dtype == wanted.get(key, state_dtype(group, p)) and value.dtype != state[key].dtype:
                state[key] = value.to(device=state[key].device)


def dequantized_state_dict(optimizer):
    """optimizer.state_dict() with every 8-bit state as a float32 tensor of its
    param's shape: what torch.optim (or an optimizer without 8-bit states)
    loads. The other direction needs nothing: an 8-bit optimizer quantizes
    the float states of a loaded state dict at its next step."""
    state_dict = optimizer.state_dict()
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    for index, state in state_dict["state"].items():
        p, group = params[index]
        for key, value in list(state.items()):
            if torch.is_tensor(value) and value.dtype == torch.uint8 and key != "step":
                signed = key not in optimizer._unsigned_states
                state[key] = quantized_ref.dequantize(value, p.shape, signed)
    return state_dict
