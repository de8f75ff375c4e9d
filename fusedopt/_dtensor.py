"""DTensor params (FSDP2, HSDP, tensor parallel): the step runs on the local shards.

An optimizer update is elementwise, so every rank can update its own shard of
a param with its own shards of the grad and states, whatever the placements,
as long as the three are laid out alike. fusedopt checks that (same mesh,
same placements, no Partial grad), then hands the native op the local
tensors: one call per (group, device, dtype) as for plain tensors. The state
stays DTensors with the param's mesh and placements, as torch.optim keeps it,
so distributed checkpoints (torch.distributed.checkpoint) read and write it.

Routing the op through DTensor's dispatcher instead (register_sharding,
local_map) was measured at 35-95 us per param per step.
"""
try:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import Partial
except ImportError:  # torch built without distributed
    DTensor = Partial = None


def is_dtensor(t):
    return DTensor is not None and isinstance(t, DTensor)


def same_layout(a, b):
    """Whether DTensors a and b have the same mesh, placements and global shape."""
    return a._spec is b._spec or a._spec == b._spec


def _describe(t):
    return f"mesh {t.device_mesh.mesh.tolist()}, placements {t.placements}, shape {tuple(t.shape)}"


def check_like_param(optimizer_name, what, index, t, param):
    """Raises ValueError unless t (a grad or state) is laid out as its DTensor param."""
    if not is_dtensor(t):
        raise ValueError(f"fusedopt.{optimizer_name}: the {what} of param {index} is a plain tensor but the param "
                         "is a DTensor; a DTensor param's grad and states must be DTensors laid out as the param")
    if any(isinstance(p, Partial) for p in t.placements):
        raise ValueError(f"fusedopt.{optimizer_name}: the {what} of param {index} has a Partial placement "
                         f"({t.placements}): its shards are not yet summed across ranks, so an update from them "
                         "would differ per rank; reduce it first (FSDP and DDP do)")
    if not same_layout(t, param):
        raise ValueError(f"fusedopt.{optimizer_name}: the {what} of param {index} is laid out as {_describe(t)} but "
                         f"the param as {_describe(param)}; they must match for the update to run on local shards")


def check_group(optimizer_name, group_index, params):
    """Raises ValueError if a param group mixes DTensors and plain tensors on one device."""
    kinds = {}
    for p in params:
        kinds.setdefault(p.device, set()).add(is_dtensor(p))
    for device, seen in kinds.items():
        if len(seen) > 1:
            raise ValueError(f"fusedopt.{optimizer_name}: param_groups[{group_index}] mixes DTensor and plain "
                             f"tensor params on {device}; put them in separate param groups")


def check_grads(optimizer_name, params, group_params):
    """Raises ValueError unless every grad is laid out as its DTensor param
    (checked before the step creates any state)."""
    index = {id(p): i for i, p in enumerate(group_params)}
    for p in params:
        check_like_param(optimizer_name, "grad", index[id(p)], p.grad, p)


def to_local(optimizer_name, lists, element_keys, params, group_params):
    """Checks a DTensor bucket's states against their params and replaces
    every element list by the local tensors, in place."""
    index = {id(p): i for i, p in enumerate(group_params)}
    for key in element_keys:
        if key in ("params", "grads"):
            continue
        what = key[:-1] if key.endswith("s") else key
        for param, t in zip(params, lists[key]):
            check_like_param(optimizer_name, what, index[id(param)], t, param)
    for key in element_keys:
        lists[key] = [t._local_tensor for t in lists[key]]


def index_map(p):
    """(base, row_local, row_global) of p's local shard (cpu::IndexMap): element
    i of the shard is element base + (i // row_local) * row_global + i % row_local
    of the whole tensor, so stochastic rounding draws the same bits for it on
    any number of ranks. A shard cut along more than one dim (2-D FSDP + TP on
    different dims) has no such form: its bits are then drawn by local index
    (unbiased all the same, but they change with the world size)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    local = p._local_tensor
    numel = max(1, local.numel())
    if not local.is_contiguous():
        return (0, numel, numel)
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    cut = [d for d in range(len(shape)) if shape[d] != p.shape[d] or offset[d] != 0]
    if not cut:
        return (0, numel, numel)
    if len(cut) > 1 or 0 in shape:
        return (0, numel, numel)
    d = cut[0]
    inner = 1
    for size in p.shape[d + 1:]:
        inner *= size
    return (offset[d] * inner, shape[d] * inner, p.shape[d] * inner)
