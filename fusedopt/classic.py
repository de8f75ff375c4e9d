"""The seed document's layer-level optimizer API, on fusedopt's fused kernels.

Code written against the seed (shared/seed/optimization-for-deep-learning.txt)
switches by changing one import:

    from fusedopt import classic
    opt = classic.AdamOptimizer()
    layer_opt = copy.copy(opt)                 # same hyperparameters, fresh state
    w = layer_opt.update(w, alpha, dw, dr, lambdaa)

Every rule uses g = dw + lambdaa * dr and updates `w` in place, in one pass
over memory (it also returns `w`). State tensors take `w`'s dtype and device.
`epsilon` is the seed's name for the momentum coefficient; `delta` is its
small constant (default 1e-6, as its equations say). docs/classic.md lists
the slips of the seed's own code that this module mends.
"""
from abc import ABC, abstractmethod

import torch

from . import _native
from .reference import classic as reference

DELTA = 1e-6


class Optimizer(ABC):
    """Abstract base class of the classic optimizers."""

    @abstractmethod
    def __init__(self):
        """Initialize optimizer"""

    @abstractmethod
    def __copy__(self):
        """A fresh optimizer with the same hyperparameters and no state."""

    @abstractmethod
    def update(self, w, alpha, dw, dr, lambdaa=1.0):
        """Updates w in place from the loss gradient dw, the regularization
        gradient dr (or None) and its weight lambdaa; returns w."""


class _Fused(Optimizer):
    """Shared machinery: state creation, input checks, native or reference."""

    _op = None  # torch.ops.fusedopt.<_op>
    _state_names = ()

    def __init__(self, delta=DELTA, **hyper):
        if not delta >= 0:
            raise ValueError(f"Invalid delta: {delta}")
        self.delta = delta
        self._hyper = hyper
        for name, value in hyper.items():
            setattr(self, name, value)
        self._state = None

    def __copy__(self):
        return type(self)(delta=self.delta, **{k: getattr(self, k) for k in self._hyper})

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args}{', ' if args else ''}delta={self.delta!r})"

    def update(self, w, alpha, dw, dr, lambdaa=1.0):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"w must be a floating-point tensor, got {type(w).__name__}"
                            + (f" of {w.dtype}" if isinstance(w, torch.Tensor) else ""))
        dw = self._like_w(w, dw, "dw")
        dr = None if dr is None else self._like_w(w, dr, "dr")
        self._prepare_state(w)
        with torch.no_grad():
            if _native.has_native_kernel(self._op, w.device):
                self._native(w, dw, dr, float(alpha), float(lambdaa))
            else:
                _native.warn_fallback(self._op, w.device)
                self._reference(w, dw, dr, float(alpha), float(lambdaa))
        return w

    def _prepare_state(self, w):
        """Creates the state like w on first use; follows w to a new dtype or
        device; refuses a w of another shape (each layer needs its own copy)."""
        if self._state is None:
            self._state = self._new_state(w)
            self._shape = w.shape
        elif w.shape != self._shape:
            raise ValueError(f"{type(self).__name__} holds state for shape {tuple(self._shape)} but got w of "
                             f"shape {tuple(w.shape)}; give each layer its own copy.copy(optimizer)")
        for name in self._state_names:
            if self._state[name].dtype != w.dtype or self._state[name].device != w.device:
                self._state[name] = self._state[name].to(dtype=w.dtype, device=w.device)

    @staticmethod
    def _like_w(w, t, name):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != w.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but w has shape {tuple(w.shape)}")
        return t.to(device=w.device, dtype=w.dtype)

    def _new_state(self, w):
        return {name: torch.zeros_like(w) for name in self._state_names}

    def _lists(self, w, dw, dr):
        return [w], [dw], ([] if dr is None else [dr])


class DefaultSGDOptimizer(_Fused):
    """Gradient descent: w -= alpha g."""

    _op = "classic_sgd_"

    def __init__(self, delta=DELTA):
        super().__init__(delta)

    def _native(self, w, dw, dr, alpha, lambdaa):
        torch.ops.fusedopt.classic_sgd_(*self._lists(w, dw, dr), [], alpha=alpha, lambdaa=lambdaa, epsilon=0.0,
                                        nesterov=False)

    def _reference(self, w, dw, dr, alpha, lambdaa):
        reference.sgd(w, dw, dr, None, alpha=alpha, lambdaa=lambdaa, epsilon=0.0, nesterov=False)


class SGDMomentumOptimizer(_Fused):
    """Momentum: v = epsilon v - alpha g, w += v."""

    _op = "classic_sgd_"
    _state_names = ("v",)
    _nesterov = False

    def __init__(self, epsilon=1e-4, delta=DELTA):
        super().__init__(delta, epsilon=epsilon)

    def _native(self, w, dw, dr, alpha, lambdaa):
        torch.ops.fusedopt.classic_sgd_(*self._lists(w, dw, dr), [self._state["v"]], alpha=alpha, lambdaa=lambdaa,
                                        epsilon=float(self.epsilon), nesterov=self._nesterov)

    def _reference(self, w, dw, dr, alpha, lambdaa):
        reference.sgd(w, dw, dr, self._state["v"], alpha=alpha, lambdaa=lambdaa, epsilon=float(self.epsilon),
                      nesterov=self._nesterov)


class SGDNesterovOptimizer(SGDMomentumOptimizer):
    """Nesterov momentum with the gradient taken at w (Sutskever et al., 2013):
    v = epsilon v - alpha g, w += epsilon v - alpha g. The seed describes it
    but never implements it."""

    _nesterov = True


def SGDOptimizer(momentum=False, epsilon=1e-4, nesterov=False, delta=DELTA):
    """Stochastic gradient descent, with momentum or Nesterov momentum."""
    if nesterov and not momentum:
        raise ValueError("Nesterov momentum requires momentum=True")
    if not momentum:
        return DefaultSGDOptimizer(delta=delta)
    cls = SGDNesterovOptimizer if nesterov else SGDMomentumOptimizer
    return cls(epsilon=epsilon, delta=delta)


class AdaGradOptimizer(_Fused):
    """AdaGrad: r += g^2, w -= alpha g / (delta + sqrt(r))."""

    _op = "classic_adagrad_"
    _state_names = ("r",)

    def __init__(self, delta=DELTA):
        super().__init__(delta)

    def _native(self, w, dw, dr, alpha, lambdaa):
        torch.ops.fusedopt.classic_adagrad_(*self._lists(w, dw, dr), [self._state["r"]], alpha=alpha,
                                            lambdaa=lambdaa, delta=float(self.delta))

    def _reference(self, w, dw, dr, alpha, lambdaa):
        reference.adagrad(w, dw, dr, self._state["r"], alpha=alpha, lambdaa=lambdaa, delta=float(self.delta))


class DefaultRMSPropOptimizer(_Fused):
    """RMSProp: r = rho r + (1 - rho) g^2, w -= alpha g / sqrt(delta + r)."""

    _op = "classic_rmsprop_"
    _state_names = ("r",)

    def __init__(self, rho=0.9, delta=DELTA):
        super().__init__(delta, rho=rho)

    def _velocity(self):
        return None

    def _native(self, w, dw, dr, alpha, lambdaa):
        v = self._velocity()
        torch.ops.fusedopt.classic_rmsprop_(*self._lists(w, dw, dr), [self._state["r"]], [] if v is None else [v],
                                            alpha=alpha, lambdaa=lambdaa, rho=float(self.rho),
                                            delta=float(self.delta), epsilon=float(getattr(self, "epsilon", 0.0)))

    def _reference(self, w, dw, dr, alpha, lambdaa):
        reference.rmsprop(w, dw, dr, self._state["r"], self._velocity(), alpha=alpha, lambdaa=lambdaa,
                          rho=float(self.rho), delta=float(self.delta),
                          epsilon=float(getattr(self, "epsilon", 0.0)))


class RMSPropMomentumOptimizer(DefaultRMSPropOptimizer):
    """RMSProp with momentum: r as RMSProp, v = epsilon v - alpha g / sqrt(delta + r), w += v."""

    _state_names = ("r", "v")

    def __init__(self, rho=0.9, epsilon=1e-4, delta=DELTA):
        _Fused.__init__(self, delta, rho=rho, epsilon=epsilon)

    def _velocity(self):
        return self._state["v"]


def RMSPropOptimizer(momentum=False, rho=0.9, epsilon=1e-4, delta=DELTA):
    """RMSProp, with or without momentum."""
    if momentum:
        return RMSPropMomentumOptimizer(rho=rho, epsilon=epsilon, delta=delta)
    return DefaultRMSPropOptimizer(rho=rho, delta=delta)


class AdamOptimizer(_Fused):
    """Adam: s = rho1 s + (1 - rho1) g, r = rho2 r + (1 - rho2) g^2,
    w -= alpha (s / (1 - rho1^t)) / (sqrt(r / (1 - rho2^t)) + delta)."""

    _op = "classic_adam_"
    _state_names = ("s", "r")

    def __init__(self, rho1=0.9, rho2=0.999, delta=DELTA):
        super().__init__(delta, rho1=rho1, rho2=rho2)

    def _new_state(self, w):
        state = super()._new_state(w)
        state["t"] = torch.zeros((), dtype=torch.float64)
        return state

    def _native(self, w, dw, dr, alpha, lambdaa):
        torch.ops.fusedopt.classic_adam_(*self._lists(w, dw, dr), [self._state["s"]], [self._state["r"]],
                                         [self._state["t"]], alpha=alpha, lambdaa=lambdaa, rho1=float(self.rho1),
                                         rho2=float(self.rho2), delta=float(self.delta))

    def _reference(self, w, dw, dr, alpha, lambdaa):
        self._state["t"] += 1
        reference.adam(w, dw, dr, self._state["s"], self._state["r"], t=self._state["t"].item(), alpha=alpha,
                       lambdaa=lambdaa, rho1=float(self.rho1), rho2=float(self.rho2), delta=float(self.delta))


__all__ = ["Optimizer", "SGDOptimizer", "DefaultSGDOptimizer", "SGDMomentumOptimizer", "SGDNesterovOptimizer",
           "AdaGradOptimizer", "RMSPropOptimizer", "DefaultRMSPropOptimizer", "RMSPropMomentumOptimizer",
           "AdamOptimizer"]
