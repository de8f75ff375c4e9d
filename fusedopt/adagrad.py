import torch
from torch.optim.adagrad import adagrad as torch_adagrad

from . import _precision, reference
from .optimizer import FusedOptimizer, as_float, check_common_flags, check_hyperparameters, new_step


class Adagrad(FusedOptimizer):
    """Drop-in for torch.optim.Adagrad (lr_decay, initial_accumulator_value,
    eps), with the whole update of a param group in one fused pass. As in
    torch, state is created for every param at construction. Sparse gradients
    are refused with an error. `foreach` and `fused` have no effect;
    `differentiable=True` is refused."""

    _op = "adagrad_"
    _element_lists = ("params", "grads", "state_sums")
    _state_lists = ("state_sums",)
    _state_keys = {"state_sums": "sum"}
    _unsigned_states = ("sum",)
    _state_signs = (False,)
    _op_lists = _element_lists + ("state_steps", "companions")
    _setstate_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 backend=None, param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
                 quantize_threshold=None):
        check_hyperparameters(lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              initial_accumulator_value=initial_accumulator_value, eps=eps)
        check_common_flags(type(self).__name__, foreach, fused, differentiable)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused,
                        **_precision.defaults(param_precision=param_precision, state_dtype=state_dtype, stochastic_states=stochastic_states, seed=seed,
                                              quantize_threshold=quantize_threshold))
        super().__init__(params, defaults, backend)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group)

    def _init_state(self, p, group):
        state = self.state[p]
        state["step"] = new_step()
        value = group["initial_accumulator_value"]
        value = complex(value, value) if torch.is_complex(p) else value
        state["sum"] = _precision.full(group, p, value, signed=False)

    def share_memory(self):
        """Calls tensor.share_memory_() on the state sum tensors."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()

    def _gather(self, group, params):
        lists = {key: [] for key in self._element_lists + ("state_steps",)}
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                self._init_state(p, group)
            lists["params"].append(p)
            lists["grads"].append(p.grad)
            lists["state_sums"].append(state["sum"])
            lists["state_steps"].append(state["step"])
        return lists

    _takes_sparse = True

    def _sparse_step(self, group, params):
        """Sparse grads (embeddings with sparse=True) take torch.optim.Adagrad's
        own sparse step: there is no dense pass to fuse."""
        for p in params:
            if len(self.state[p]) == 0:
                self._init_state(p, group)
        torch_adagrad(params, [p.grad for p in params], [self.state[p]["sum"] for p in params],
                                    [self.state[p]["step"] for p in params], has_sparse_grad=True, foreach=False,
                                    lr=as_float(group["lr"]), weight_decay=group["weight_decay"],
                                    lr_decay=group["lr_decay"], eps=group["eps"], maximize=group["maximize"])

    def _hyper(self, group):
        return dict(lr=self._lr(group), lr_decay=as_float(group["lr_decay"]),
                    weight_decay=as_float(group["weight_decay"]), eps=as_float(group["eps"]),
                    maximize=group["maximize"])

    def _reference(self, group, lists):
        hyper = self._hyper(group)
        for i in range(len(lists["params"])):
            step_t = lists["state_steps"][i]
            step_t += 1
            self._reference_step(reference.adagrad, group, lists, i, [lists["state_sums"][i]], count=step_t.item(),
                                 step=step_t.item(), **hyper)
