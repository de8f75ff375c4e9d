import torch

from . import _precision, reference
from .optimizer import FusedOptimizer, as_float, check_common_flags, check_hyperparameters, new_step


def _check_adam_args(lr, betas, eps, weight_decay):
    """torch.optim.Adam's argument checks, with its messages."""
    check_hyperparameters(lr, eps=eps)
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], torch.Tensor) and isinstance(betas[1], torch.Tensor))):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        if isinstance(beta, torch.Tensor) and beta.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element")


class Adam(FusedOptimizer):
    """Drop-in for torch.optim.Adam (same arguments, defaults, state and
    state_dict), with the whole update of a param group in one fused pass.

    `foreach` and `fused` are accepted and have no effect: fusedopt always runs
    its fused kernel. With `capturable=True` on a GPU the step counts live on
    the device and a tensor lr is read there, so a step can be captured in a
    CUDA graph.
    `differentiable=True` is refused. `backend="reference"` runs the
    pure-PyTorch reference instead of the native kernel.
    """

    _op = "adam_"
    _element_lists = ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    _state_lists = ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    _state_keys = {"exp_avgs": "exp_avg", "exp_avg_sqs": "exp_avg_sq", "max_exp_avg_sqs": "max_exp_avg_sq"}
    _unsigned_states = ("exp_avg_sq", "max_exp_avg_sq")
    _state_signs = (True, False, False)  # of the reference's states, for 8-bit states
    _op_lists = _element_lists + ("state_steps", "companions")
    _setstate_defaults = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                          "differentiable": False, "fused": None, "decoupled_weight_decay": False}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
                 *, foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, backend=None, param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
                 quantize_threshold=None):
        _check_adam_args(lr, betas, eps, weight_decay)
        check_common_flags(type(self).__name__, foreach, fused, differentiable)
        betas = tuple(b.squeeze() if isinstance(b, torch.Tensor) and b.dim() != 0 else b for b in betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        **_precision.defaults(param_precision=param_precision, state_dtype=state_dtype, stochastic_states=stochastic_states, seed=seed,
                                              quantize_threshold=quantize_threshold))
        super().__init__(params, defaults, backend)

    def _sparse_error(self):
        return "Adam does not support sparse gradients, please consider SparseAdam instead"

    def _gather(self, group, params):
        amsgrad = group["amsgrad"]
        lists = {key: [] for key in self._element_lists + ("state_steps",)}
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = new_step(p, group["capturable"])
                state["exp_avg"] = _precision.zeros(group, p)
                state["exp_avg_sq"] = _precision.zeros(group, p)
                if amsgrad:
                    state["max_exp_avg_sq"] = _precision.zeros(group, p)
            lists["params"].append(p)
            lists["grads"].append(p.grad)
            lists["exp_avgs"].append(state["exp_avg"])
            lists["exp_avg_sqs"].append(state["exp_avg_sq"])
            if amsgrad:
                lists["max_exp_avg_sqs"].append(state["max_exp_avg_sq"])
            lists["state_steps"].append(state["step"])
        return lists

    def _hyper(self, group):
        beta1, beta2 = (as_float(b) for b in group["betas"])
        if beta1 == 1.0:
            # torch.optim.Adam fails the same way, on lr / (1 - beta1**step).
            raise ZeroDivisionError(f"fusedopt.{type(self).__name__}: betas[0] is 1.0, so the bias correction "
                                    "1 - beta1**step is zero; betas[0] must be in [0, 1)")
        return dict(lr=self._lr(group), beta1=beta1, beta2=beta2,
                    weight_decay=as_float(group["weight_decay"]), eps=as_float(group["eps"]),
                    amsgrad=group["amsgrad"], maximize=group["maximize"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])

    def _structure(self, group):
        return group["amsgrad"]

    def _hyper_traceable(self, group):
        # The op takes betas as floats; a tensor beta would be read on the host.
        return not isinstance(group["betas"][0], torch.Tensor)

    def _reference(self, group, lists):
        hyper = self._hyper(group)
        for i in range(len(lists["params"])):
            step_t = lists["state_steps"][i]
            step_t += 1
            max_sq = lists["max_exp_avg_sqs"][i] if hyper["amsgrad"] else None
            self._reference_step(reference.adam, group, lists, i,
                                 [lists["exp_avgs"][i], lists["exp_avg_sqs"][i], max_sq], count=step_t.item(),
                                 step=step_t.item(), **hyper)


class AdamW(Adam):
    """Drop-in for torch.optim.AdamW: Adam with decoupled weight decay
    (default 1e-2). See fusedopt.Adam for the flags."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend=None, param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
                 quantize_threshold=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=True, backend=backend, param_precision=param_precision, state_dtype=state_dtype, stochastic_states=stochastic_states, seed=seed,
                                              quantize_threshold=quantize_threshold)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
