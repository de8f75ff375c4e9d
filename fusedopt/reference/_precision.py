from contextlib import contextmanager

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextmanager
def math_precision(grad, *states, inputs=1):
    """Yields (grad, *states) in the math dtype: float32 copies for bfloat16 and
    float16 tensors (written back to the states on exit), the tensors
    themselves otherwise. The first `inputs` of (grad, *states) are read-only."""
    tensors = (grad, *states)
    if grad.dtype not in _LOW_PRECISION:
        yield tensors
        return
    upcast = [t.float() for t in tensors]
    yield tuple(upcast)
    for t, u in list(zip(tensors, upcast))[inputs:]:
        t.copy_(u)


def effective_grad(grad, param, weight_decay, maximize):
    """The gradient every rule uses: negated for `maximize`, plus the L2 term."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    return grad
