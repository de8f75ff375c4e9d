from contextlib import contextmanager

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@contextmanager
def math_precision(grad, *states):
    """Yields (grad, *states) in the math dtype: float32 copies for bfloat16 and
    float16 tensors (written back to `states` on exit), the tensors themselves
    otherwise."""
    if grad.dtype not in _LOW_PRECISION:
        yield (grad, *states)
        return
    upcast = [t.float() for t in states]
    yield (grad.float(), *upcast)
    for t, u in zip(states, upcast):
        t.copy_(u)


def effective_grad(grad, param, weight_decay, maximize):
    """The gradient every rule uses: negated for `maximize`, plus the L2 term."""
    if maximize:
        grad = -grad
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    return grad
