"""The shared step of every fusedopt optimizer.

A step walks each param group once: params with a gradient are bucketed by
(device, dtype), each bucket's state is created on first use exactly as
torch.optim creates it, and the whole bucket goes to ONE native op call (or,
where no native kernel exists, to the per-tensor reference).

After such a step, a group whose params all had gradients keeps its lists in
C++ (a "plan"); later steps pass only their scalars and the gradients are
gathered in C++, so a step costs no Python work per tensor. A plan is
dropped when the group's params list, the optimizer's state dict or the
group's state layout changes (add_param_group, load_state_dict, a new
`amsgrad`, ...). Replacing a state tensor by hand (`opt.state[p]["exp_avg"] =
t`) is not seen: call `invalidate_plans()` after doing that.
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


def check_hyperparameters(lr, **non_negative):
    """torch.optim's checks and messages: a one-element tensor lr, then each
    named value >= 0, in the order given."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    for name, value in {"lr": lr, **non_negative}.items():
        if not 0.0 <= value:
            what = {"lr": "learning rate", "eps": "epsilon value"}.get(name, f"{name} value")
            raise ValueError(f"Invalid {what}: {value}")


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
    _gather (collect/create state), _hyper and _reference."""

    _op = None  # name of the torch.ops.fusedopt op
    _op_lists = ()  # the op's list arguments, in schema order: keys of _gather's result
    _element_lists = ()  # keys of _gather's result holding per-element tensors
    _state_lists = ()  # the states kept by a plan, in the op's order
    _setstate_defaults = {}  # group keys older state dicts may lack

    def __init__(self, params, defaults, backend=None):
        self.backend = _native.resolve_backend(backend)
        self._plans = {}
        super().__init__(params, defaults)

    def invalidate_plans(self):
        """Forgets the cached C++ lists of every group; the next step rebuilds them."""
        self.__dict__.setdefault("_plans", {}).clear()

    def add_param_group(self, param_group):
        self.invalidate_plans()
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict):
        self.invalidate_plans()
        super().load_state_dict(state_dict)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_plans", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", _native.resolve_backend(None))
        self._plans = {}
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
            if not self._step_planned(group):
                self._step_group(group)
        return loss

    def _step_group(self, group):
        buckets = {}
        every_param_has_grad = True
        for p in group["params"]:
            if p.grad is None:
                every_param_has_grad = False
                continue
            if p.grad.is_sparse:
                raise RuntimeError(self._sparse_error())
            buckets.setdefault((p.device, p.dtype), []).append(p)
        plannable = every_param_has_grad and _native.native_loaded() and not torch.compiler.is_compiling()
        planned = []
        for (device, dtype), params in buckets.items():
            lists = self._gather(group, params)
            if dtype.is_complex:
                plannable = False
                for key in self._element_lists:
                    lists[key] = [torch.view_as_real(t) for t in lists[key]]
            if self._runs_native(device):
                self._run_native(group, lists)
                planned.append(lists)
            else:
                plannable = False
                self._reference(group, lists)
        if plannable and planned:
            self._plans[id(group)] = _make_plan(self, group, planned)

    def _step_planned(self, group):
        plan = self._plans.get(id(group)) if self._plans else None
        if plan is None or torch.compiler.is_compiling():
            return False
        if not plan.matches(self, group):
            del self._plans[id(group)]
            return False
        if not all(lists.ready() for lists in plan.lists):
            return False
        step_fn = getattr(_native.C, f"{self._op.rstrip('_')}_step")
        hyper = self._hyper(group)
        for lists in plan.lists:
            step_fn(lists, **hyper)
        return True

    def _structure(self, group):
        """What of a group decides which state lists exist (a plan is only
        reused while this is unchanged)."""
        return None

    def _hyper(self, group):
        """The op's scalar arguments for this group, as Python floats and bools."""
        raise NotImplementedError

    def _run_native(self, group, lists):
        getattr(torch.ops.fusedopt, self._op)(*(lists[k] for k in self._op_lists), **self._hyper(group))

    def _gather(self, group, params):
        raise NotImplementedError

    def _reference(self, group, lists):
        raise NotImplementedError


@torch.compiler.disable
def _make_plan(optimizer, group, bucket_lists):
    # Never traced: the C++ lists are an eager-mode cache.
    return _Plan(optimizer, group, bucket_lists)


class _Plan:
    """A group's lists kept in C++, and what they were built from."""

    def __init__(self, optimizer, group, bucket_lists):
        self.params = group["params"]
        self.count = len(self.params)
        self.state = optimizer.state
        self.state_count = len(optimizer.state)
        self.structure = optimizer._structure(group)
        self.backend = optimizer.backend
        self.lists = [
            _native.C.CachedLists(lists["params"], [lists[k] for k in optimizer._state_lists],
                                  lists.get("state_steps", []))
            for lists in bucket_lists
        ]

    def matches(self, optimizer, group):
        return (group["params"] is self.params and len(self.params) == self.count
                and optimizer.state is self.state and len(optimizer.state) == self.state_count
                and optimizer.backend == self.backend and optimizer._structure(group) == self.structure)
