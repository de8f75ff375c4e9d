from torch.optim.sgd import sgd as torch_sgd

from . import _precision, reference
from .optimizer import FusedOptimizer, as_float, check_common_flags, check_hyperparameters


class SGD(FusedOptimizer):
    """Drop-in for torch.optim.SGD (plain, momentum, dampening, Nesterov), with
    the whole update of a param group in one fused pass. `foreach` and `fused`
    are accepted and have no effect; `differentiable=True` is refused."""

    _op = "sgd_"
    _element_lists = ("params", "grads", "momentum_buffers")
    _state_lists = ("momentum_buffers",)
    _op_lists = ("params", "grads", "momentum_buffers", "state_steps", "companions")
    _state_keys = {"momentum_buffers": "momentum_buffer"}
    _state_signs = (True,)
    _setstate_defaults = {"nesterov": False, "maximize": False, "foreach": None,
                          "differentiable": False, "fused": False}

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None, backend=None, param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
                 quantize_threshold=None):
        check_hyperparameters(lr, momentum=momentum, weight_decay=weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_common_flags(type(self).__name__, foreach, fused, differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach,
                        differentiable=differentiable, fused=fused,
                        **_precision.defaults(param_precision=param_precision, state_dtype=state_dtype, stochastic_states=stochastic_states, seed=seed,
                                              quantize_threshold=quantize_threshold))
        super().__init__(params, defaults, backend)

    _counts_steps = False

    def _gather(self, group, params):
        lists = {key: [] for key in self._element_lists + ("first_step",)}
        with_momentum = group["momentum"] != 0
        for p in params:
            lists["params"].append(p)
            lists["grads"].append(p.grad)
            if with_momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                # torch.optim starts the buffer as a copy of the gradient; the
                # kernel does that copy when first_step is set.
                lists["first_step"].append(int(buf is None))
                if buf is None:
                    buf = state["momentum_buffer"] = _precision.zeros(group, p)
                lists["momentum_buffers"].append(buf)
        return lists

    def _withhold_new_state(self, lists):
        # A new buffer takes the gradient (first_step): a compiled step that
        # made it must not run again once it holds momentum.
        fresh = tuple(i for i, first in enumerate(lists["first_step"]) if first)
        for i in fresh:
            del self.state[lists["params"][i]]["momentum_buffer"]
        return fresh

    def _restore_new_state(self, lists, withheld):
        for i in withheld:
            self.state[lists["params"][i]]["momentum_buffer"] = lists["momentum_buffers"][i]

    def _hyper(self, group):
        return dict(lr=self._lr(group), weight_decay=as_float(group["weight_decay"]),
                    momentum=as_float(group["momentum"]), dampening=as_float(group["dampening"]),
                    nesterov=group["nesterov"], maximize=group["maximize"])

    def _structure(self, group):
        return group["momentum"] != 0

    def _run_native(self, group, lists):
        self._native_op(lists)(lists["params"], lists["grads"], lists["momentum_buffers"],
                                lists.get("state_steps", []), lists["companions"], first_step=lists["first_step"],
                                **self._hyper(group), **self._native_inputs(group, lists))

    _takes_sparse = True

    def _sparse_step(self, group, params):
        """Sparse grads (embeddings with sparse=True) take torch.optim.SGD's own
        per-tensor step: there is no dense pass to fuse."""
        momentum = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") for p in params] if momentum != 0 else [None] * len(params)
        torch_sgd(params, [p.grad for p in params], buffers, has_sparse_grad=True, foreach=False,
                            weight_decay=group["weight_decay"], momentum=momentum, lr=as_float(group["lr"]),
                            dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        if momentum != 0:
            for p, buffer in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buffer

    def _reference(self, group, lists):
        hyper = self._hyper(group)
        with_momentum = hyper["momentum"] != 0
        steps = lists.get("state_steps", [])
        for i in range(len(lists["params"])):
            buf = lists["momentum_buffers"][i] if with_momentum else None
            first = bool(lists["first_step"][i]) if with_momentum else False
            step = None
            if steps:
                steps[i] += 1
                step = steps[i].item()
            self._reference_step(reference.sgd, group, lists, i, [buf], count=step, first_step=first, **hyper)
