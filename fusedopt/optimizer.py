"""The shared step of every fusedopt optimizer.

A step walks each param group once: params with a gradient are bucketed by
(device, dtype), each bucket's state is created on first use exactly as
torch.optim creates it, and the whole bucket goes to ONE native op call (or,
where no native kernel exists, to the per-tensor reference).
"""
import torch
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype

from . import _native


def as_float(x):
    """A hyperparameter as a Python float (tensor hyperparameters are read once
    per step on the host)."""
    return x.item() if isinstance(x, torch.Tensor) else float(x)


def new_step():
    """A fresh `step` state, laid out as torch.optim's for-loop path keeps it."""
    return torch.tensor(0.0, dtype=_get_scalar_dtype())


def check_common_flags(name, foreach, fused, differentiable):
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable:
        raise RuntimeError(
            f"fusedopt.{name} does not support `differentiable=True`: its step runs outside "
            "autograd; use torch.optim for differentiable optimizer steps"
        )


class FusedOptimizer(Optimizer):
    """Base class: subclasses name their op and element lists and implement
    _gather (collect/create state), _native and _reference."""

    _op = None  # name of the torch.ops.fusedopt op
    _element_lists = ()  # keys of _gather's result holding per-element tensors
    _setstate_defaults = {}  # group keys older state dicts may lack

    def __init__(self, params, defaults, backend=None):
        self.backend = _native.resolve_backend(backend)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", _native.resolve_backend(None))
        for group in self.param_groups:
            for key, value in self._setstate_defaults.items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_get_scalar_dtype())

    def _sparse_error(self):
        return f"{type(self).__name__} does not support sparse gradients"

    def _runs_native(self, device):
        if self.backend == "reference":
            return False
        if _native.has_native_kernel(self._op, device):
            return True
        _native.warn_fallback(self._op, device)
        return False

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            buckets = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(self._sparse_error())
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for (device, dtype), params in buckets.items():
                lists = self._gather(group, params)
                if dtype.is_complex:
                    for key in self._element_lists:
                        lists[key] = [torch.view_as_real(t) for t in lists[key]]
                if self._runs_native(device):
                    self._native(group, lists)
                else:
                    self._reference(group, lists)
        return loss

    def _gather(self, group, params):
        raise NotImplementedError

    def _native(self, group, lists):
        raise NotImplementedError

    def _reference(self, group, lists):
        raise NotImplementedError
