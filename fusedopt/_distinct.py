"""Refuses param lists whose tensors share memory.

A fused step updates all of a group's params at once, split across threads
(and, on a GPU, across blocks): two params that overlap in memory would be
read and written in an order the kernel does not define, and the same param
listed twice would get two updates from one shared state. torch.optim only
warns about the second and gives sequential results for the first; fusedopt
refuses both when the param group is added, before any step.
"""
import torch


def _local(t):
    """The tensor that holds a param's elements on this rank (a DTensor's shard)."""
    return t._local_tensor if hasattr(t, "_local_tensor") else t


def _span(t):
    """(first, last + 1) element offsets of t in its storage, in units of its dtype."""
    extent = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return t.storage_offset(), t.storage_offset() + extent


def _overlap(a, b):
    """Whether a and b, views of one storage, share an element."""
    if a.dtype != b.dtype:
        return True  # spans overlap (the caller checked); different views of bytes: refuse
    (a0, a1), (b0, b1) = _span(a), _span(b)
    if a.is_contiguous() and b.is_contiguous():
        return True
    # Interleaved strided views (p[::2] and p[1::2]) can have overlapping spans
    # and no common element: count the uses of each element of the span.
    first = min(a0, b0)
    marks = torch.zeros(max(a1, b1) - first, dtype=torch.int8)
    for t in (a, b):
        torch.as_strided(marks, t.shape, t.stride(), t.storage_offset() - first).add_(1)
    return bool((marks > 1).any())


def check_distinct(optimizer_name, existing_groups, new_params):
    """Raises ValueError if a param of new_params appears twice, or shares memory
    with another param of new_params or of existing_groups."""
    seen = {}
    for i, p in enumerate(new_params):
        if id(p) in seen:
            raise ValueError(f"fusedopt.{optimizer_name}: the new param group lists the same parameter twice "
                             f"(params {seen[id(p)]} and {i}); each parameter may appear once")
        seen[id(p)] = i
    located = [(g, i, p) for g, group in enumerate(existing_groups) for i, p in enumerate(group["params"])]
    located += [(len(existing_groups), i, p) for i, p in enumerate(new_params)]
    by_storage = {}
    for where in located:
        t = _local(where[2])
        if not isinstance(t, torch.Tensor) or t.numel() == 0 or t.device.type == "meta":
            continue
        try:
            key = (t.device, t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # no storage (a functional tensor, say)
            continue
        by_storage.setdefault(key, []).append(where)
    for views in by_storage.values():
        if len(views) < 2:
            continue
        views.sort(key=lambda w: _local(w[2]).storage_offset() * _local(w[2]).element_size())
        for k, (g1, i1, p1) in enumerate(views):
            a = _local(p1)
            a_end = _span(a)[1] * a.element_size()
            for g2, i2, p2 in views[k + 1:]:
                b = _local(p2)
                if b.storage_offset() * b.element_size() >= a_end:
                    break
                if g2 == len(existing_groups) or g1 == len(existing_groups):
                    if _overlap(a, b):
                        raise ValueError(
                            f"fusedopt.{optimizer_name}: param {i1} of param_groups[{g1}] and param {i2} of "
                            f"param_groups[{g2}] share memory (overlapping views of one tensor); a fused step "
                            "updates every param at once, so params must not overlap")
