"""fusedopt.classic against the seed document's equations computed in float64,
its copy semantics, dtype and device handling, and the example's training."""
import copy
import math

import pytest
import torch

from fusedopt import classic

ALPHA, LAMBDAA, STEPS = 0.05, 0.3, 6


class Equations:
    """The seed's equations in float64, g = dw + lambdaa dr, for one tensor."""

    def __init__(self, kind, w, **hyper):
        self.kind, self.w, self.h = kind, w.double().clone(), hyper
        self.v = torch.zeros_like(self.w)
        self.r = torch.zeros_like(self.w)
        self.s = torch.zeros_like(self.w)
        self.t = 0

    def update(self, dw, dr):
        g = dw.double() + LAMBDAA * dr.double()
        h, a = self.h, ALPHA
        delta = h.get("delta", 1e-6)
        if self.kind == "sgd":
            self.w = self.w - a * g
        elif self.kind == "momentum":
            self.v = h["epsilon"] * self.v - a * g
            self.w = self.w + self.v
        elif self.kind == "nesterov":
            self.v = h["epsilon"] * self.v - a * g
            self.w = self.w + h["epsilon"] * self.v - a * g
        elif self.kind == "adagrad":
            self.r = self.r + g * g
            self.w = self.w - a * g / (delta + self.r.sqrt())
        elif self.kind == "rmsprop":
            self.r = h["rho"] * self.r + (1 - h["rho"]) * g * g
            self.w = self.w - a * g / (delta + self.r).sqrt()
        elif self.kind == "rmsprop-momentum":
            self.r = h["rho"] * self.r + (1 - h["rho"]) * g * g
            self.v = h["epsilon"] * self.v - a * g / (delta + self.r).sqrt()
            self.w = self.w + self.v
        elif self.kind == "adam":
            self.t += 1
            self.s = h["rho1"] * self.s + (1 - h["rho1"]) * g
            self.r = h["rho2"] * self.r + (1 - h["rho2"]) * g * g
            s_hat = self.s / (1 - h["rho1"] ** self.t)
            r_hat = self.r / (1 - h["rho2"] ** self.t)
            self.w = self.w - a * s_hat / (r_hat.sqrt() + delta)


CASES = [
    ("sgd", lambda: classic.SGDOptimizer(), {}),
    ("sgd", lambda: classic.DefaultSGDOptimizer(), {}),
    ("momentum", lambda: classic.SGDOptimizer(momentum=True, epsilon=0.8), dict(epsilon=0.8)),
    ("momentum", lambda: classic.SGDMomentumOptimizer(epsilon=0.8), dict(epsilon=0.8)),
    ("nesterov", lambda: classic.SGDOptimizer(momentum=True, epsilon=0.8, nesterov=True), dict(epsilon=0.8)),
    ("nesterov", lambda: classic.SGDNesterovOptimizer(epsilon=0.8), dict(epsilon=0.8)),
    ("adagrad", lambda: classic.AdaGradOptimizer(), {}),
    ("adagrad", lambda: classic.AdaGradOptimizer(delta=1e-3), dict(delta=1e-3)),
    ("rmsprop", lambda: classic.RMSPropOptimizer(rho=0.8), dict(rho=0.8)),
    ("rmsprop", lambda: classic.DefaultRMSPropOptimizer(rho=0.8, delta=1e-4), dict(rho=0.8, delta=1e-4)),
    ("rmsprop-momentum", lambda: classic.RMSPropOptimizer(momentum=True, rho=0.8, epsilon=0.7),
     dict(rho=0.8, epsilon=0.7)),
    ("rmsprop-momentum", lambda: classic.RMSPropMomentumOptimizer(rho=0.8, epsilon=0.7), dict(rho=0.8, epsilon=0.7)),
    ("adam", lambda: classic.AdamOptimizer(), dict(rho1=0.9, rho2=0.999)),
    ("adam", lambda: classic.AdamOptimizer(rho1=0.8, rho2=0.95, delta=1e-5), dict(rho1=0.8, rho2=0.95, delta=1e-5)),
]
IDS = [f"{kind}-{i}" for i, (kind, _, _) in enumerate(CASES)]
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind,make,hyper", CASES, ids=IDS)
def test_matches_the_seed_equations(kind, make, hyper, dtype, backend, monkeypatch):
    if backend == "reference":
        monkeypatch.setattr(classic._native, "has_native_kernel", lambda op, device: False)
        monkeypatch.setattr(classic._native, "warn_fallback", lambda op, device: None)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g, dtype=torch.float64).to(dtype)
    opt, eq = make(), Equations(kind, w, **hyper)
    for _ in range(STEPS):
        dw = torch.randn(5, 7, generator=g, dtype=torch.float64)
        dr = torch.randn(5, 7, generator=g, dtype=torch.float64)
        out = opt.update(w, ALPHA, dw.to(dtype), dr.to(dtype), LAMBDAA)
        eq.update(dw.to(dtype), dr.to(dtype))
        assert out is w
    torch.testing.assert_close(w.double(), eq.w, **TOLERANCE[dtype])


def _run_against_equations(kind, make, hyper, shape, dtype, steps=3):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=g).to(dtype)
    opt, eq = make(), Equations(kind, w, **hyper)
    for _ in range(steps):
        dw, dr = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
        opt.update(w, ALPHA, dw, dr, LAMBDAA)
        eq.update(dw, dr)
    assert w.dtype == dtype
    return w.double(), eq.w


@pytest.mark.parametrize("kind,make,hyper", CASES, ids=IDS)
def test_bfloat16_weights(kind, make, hyper):
    """Stored in bfloat16, computed in float32: within bfloat16 rounding."""
    ours, exact = _run_against_equations(kind, make, hyper, (33,), torch.bfloat16)
    torch.testing.assert_close(ours, exact, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("kind,make,hyper", CASES, ids=IDS)
def test_weight_of_a_million_elements(kind, make, hyper):
    """Over a million float32 elements, cut across threads. Normwise: among a
    million random elements a few have g = dw + lambdaa dr near delta, where
    the adaptive rules turn float32 rounding of g into a visible difference."""
    ours, exact = _run_against_equations(kind, make, hyper, (1_048_583,), torch.float32)
    assert (ours - exact).abs().max() <= 1e-4 * exact.abs().max()


def test_copy_has_the_hyperparameters_and_no_state():
    opt = classic.RMSPropOptimizer(momentum=True, rho=0.7, epsilon=0.3, delta=1e-5)
    w = torch.ones(4)
    opt.update(w, 0.1, torch.ones(4), torch.zeros(4), 0.0)
    twin = copy.copy(opt)
    assert type(twin) is type(opt) and isinstance(twin, classic.Optimizer)
    assert (twin.rho, twin.epsilon, twin.delta) == (0.7, 0.3, 1e-5)
    # A fresh copy steps like a fresh optimizer, not like one with history.
    a, b = torch.ones(4), torch.ones(4)
    twin.update(a, 0.1, torch.ones(4), torch.zeros(4), 0.0)
    classic.RMSPropOptimizer(momentum=True, rho=0.7, epsilon=0.3, delta=1e-5).update(b, 0.1, torch.ones(4),
                                                                                      torch.zeros(4), 0.0)
    assert torch.equal(a, b)


def test_every_class_is_an_optimizer_and_delta_defaults_to_the_text():
    for make in (classic.DefaultSGDOptimizer, classic.SGDMomentumOptimizer, classic.SGDNesterovOptimizer,
                 classic.AdaGradOptimizer, classic.DefaultRMSPropOptimizer, classic.RMSPropMomentumOptimizer,
                 classic.AdamOptimizer):
        opt = make()
        assert isinstance(opt, classic.Optimizer)
        assert opt.delta == 1e-6
    assert classic.SGDMomentumOptimizer().epsilon == 1e-4
    with pytest.raises(TypeError):
        classic.Optimizer()


def test_state_follows_w_in_dtype_and_device():
    opt = classic.AdamOptimizer()
    w = torch.zeros(3, dtype=torch.float64)
    opt.update(w, 0.1, torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert opt._state["s"].dtype == torch.float64 and w.dtype == torch.float64
    w16 = w.to(torch.bfloat16)
    opt.update(w16, 0.1, torch.ones(3), torch.ones(3))  # dw in float32 is cast to w's dtype
    assert w16.dtype == torch.bfloat16 and opt._state["s"].dtype == torch.bfloat16


def test_dr_none_and_bad_input():
    opt = classic.SGDOptimizer()
    w = torch.zeros(3)
    opt.update(w, 0.5, torch.ones(3), None)
    assert torch.equal(w, torch.full((3,), -0.5))
    with pytest.raises(ValueError, match="shape"):
        opt.update(w, 0.5, torch.ones(4), None)
    with pytest.raises(TypeError, match="floating-point"):
        opt.update(torch.zeros(3, dtype=torch.int64), 0.5, torch.ones(3), None)
    with pytest.raises(ValueError, match="Nesterov"):
        classic.SGDOptimizer(nesterov=True)
    shared = classic.AdamOptimizer()
    shared.update(torch.zeros(3), 0.1, torch.ones(3), None)
    with pytest.raises(ValueError, match="copy.copy"):
        shared.update(torch.zeros(5), 0.1, torch.ones(5), None)


def test_example_training_loss_falls_for_every_optimizer(tmp_path):
    from examples import classic_network
    curves = classic_network.main(["--epochs", "60", "--out-dir", str(tmp_path)])
    for (task, name), losses in curves.items():
        assert all(math.isfinite(x) for x in losses), (task, name)
        assert losses[-1] < 0.8 * losses[0], (task, name, losses[0], losses[-1])
    assert (tmp_path / "classic_network.png").exists()
