from . import _precision, reference
from .optimizer import FusedOptimizer, as_float, check_common_flags, check_hyperparameters, new_step


class RMSprop(FusedOptimizer):
    """Drop-in for torch.optim.RMSprop (alpha, eps, centered, momentum), with
    the whole update of a param group in one fused pass; torch itself has no
    fused RMSprop. `foreach` has no effect; `capturable=True` on a GPU keeps
    the step counts on the device (CUDA graphs; see fusedopt.Adam);
    `differentiable=True` is refused."""

    _op = "rmsprop_"
    _element_lists = ("params", "grads", "square_avgs", "momentum_buffers", "grad_avgs")
    _state_lists = ("square_avgs", "momentum_buffers", "grad_avgs")
    _state_keys = {"square_avgs": "square_avg", "momentum_buffers": "momentum_buffer", "grad_avgs": "grad_avg"}
    _unsigned_states = ("square_avg",)
    _state_signs = (False, True, True)
    _op_lists = _element_lists + ("state_steps", "companions")
    _setstate_defaults = {"momentum": 0, "centered": False, "foreach": None, "maximize": False,
                          "differentiable": False, "capturable": False}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, backend=None, *, param_precision="nearest", state_dtype=None, stochastic_states=False, seed=None,
                 quantize_threshold=None):
        check_hyperparameters(lr, eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        check_common_flags(type(self).__name__, foreach, None, differentiable)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable,
                        **_precision.defaults(param_precision=param_precision, state_dtype=state_dtype, stochastic_states=stochastic_states, seed=seed,
                                              quantize_threshold=quantize_threshold))
        super().__init__(params, defaults, backend)

    def _gather(self, group, params):
        lists = {key: [] for key in self._element_lists + ("state_steps",)}
        with_momentum = group["momentum"] > 0
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = new_step(p, group["capturable"])
                state["square_avg"] = _precision.zeros(group, p)
                if with_momentum:
                    state["momentum_buffer"] = _precision.zeros(group, p)
                if group["centered"]:
                    state["grad_avg"] = _precision.zeros(group, p)
            lists["params"].append(p)
            lists["grads"].append(p.grad)
            lists["square_avgs"].append(state["square_avg"])
            if with_momentum:
                lists["momentum_buffers"].append(state["momentum_buffer"])
            if group["centered"]:
                lists["grad_avgs"].append(state["grad_avg"])
            lists["state_steps"].append(state["step"])
        return lists

    def _hyper(self, group):
        return dict(lr=self._lr(group), alpha=as_float(group["alpha"]), eps=as_float(group["eps"]),
                    weight_decay=as_float(group["weight_decay"]), momentum=as_float(group["momentum"]),
                    centered=group["centered"], maximize=group["maximize"])

    def _structure(self, group):
        return group["momentum"] > 0, group["centered"]

    def _reference(self, group, lists):
        hyper = self._hyper(group)
        for i in range(len(lists["params"])):
            lists["state_steps"][i] += 1
            buf = lists["momentum_buffers"][i] if hyper["momentum"] > 0 else None
            grad_avg = lists["grad_avgs"][i] if hyper["centered"] else None
            self._reference_step(reference.rmsprop, group, lists, i, [lists["square_avgs"][i], buf, grad_avg],
                                 count=lists["state_steps"][i].item(), **hyper)
