"""Shared pieces of the test suite: the option grid of every algorithm, a
deterministic stream of gradients, and comparison of params and state."""
import itertools

import torch

import fusedopt

ALGORITHMS = ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")

# Shapes with sizes 0, 1, 7, and lengths that are no multiple of any SIMD
# width or of the CPU kernel's 64-element cut, one of them 2-D.
SHAPES = [(0,), (1,), (7,), (33,), (31, 17), (4099,)]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _sgd_options():
    out = []
    for o in _grid(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True],
                   weight_decay=[0.0, 0.1], maximize=[False, True]):
        if o["momentum"] == 0 and (o["dampening"] or o["nesterov"]):
            continue
        if o["nesterov"] and o["dampening"]:
            continue
        out.append(dict(lr=0.05, **o))
    return out


OPTIONS = {
    "SGD": _sgd_options(),
    "Adagrad": [dict(lr=0.05, **o) for o in _grid(
        lr_decay=[0.0, 0.01], initial_accumulator_value=[0.0, 0.1], eps=[1e-10, 1e-3],
        weight_decay=[0.0, 0.1], maximize=[False, True])],
    "RMSprop": [dict(lr=0.01, alpha=0.9, **o) for o in _grid(
        centered=[False, True], momentum=[0.0, 0.9], weight_decay=[0.0, 0.1], maximize=[False, True])],
    "Adam": [dict(lr=0.01, betas=(0.8, 0.95), **o) for o in _grid(
        amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])],
    "AdamW": [dict(lr=0.01, betas=(0.8, 0.95), **o) for o in _grid(
        amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])],
}

STATE_KEYS = {
    "SGD": ("momentum_buffer",),
    "Adagrad": ("step", "sum"),
    "RMSprop": ("step", "square_avg", "momentum_buffer", "grad_avg"),
    "Adam": ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "AdamW": ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
}


def option_cases():
    """(algorithm, options) pairs with readable ids, for parametrize."""
    cases, ids = [], []
    for name in ALGORITHMS:
        for opts in OPTIONS[name]:
            cases.append((name, opts))
            ids.append(name + "-" + "-".join(f"{k}={v}" for k, v in opts.items() if k not in ("lr", "betas")))
    return cases, ids


def make_params(shapes, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).to(device) for s in shapes]


def clone_params(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def gradients(params, step, seed=1):
    """The gradients of step `step`: the same for every optimizer under test,
    with a spread of magnitudes so small denominators get exercised."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for p in params:
        scale = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2.0
        out.append((torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(p.dtype).to(p.device))
    return out


def run_steps(opt, params, steps, seed=1, start=0, step_fn=None):
    """`steps` steps of opt on the gradients of steps start.., each through
    step_fn (a compiled step, say) where given."""
    for step in range(start, start + steps):
        for p, grad in zip(params, gradients(params, step, seed)):
            p.grad = grad
        (step_fn or opt.step)()


def fusedopt_twins(name, opts, start):
    """Two fusedopt optimizers `name`, each on its own copy of the params
    `start`: [(opt, params), (opt, params)]."""
    twins = []
    for _ in range(2):
        params = clone_params(start)
        twins.append((make_optimizer(fusedopt, name, params, opts), params))
    return twins


def make_optimizer(library, name, params, opts, **extra):
    cls = getattr(library, name)
    return cls(params, **opts, **extra)


def assert_same_state(opt_a, params_a, opt_b, params_b, keys, rtol, atol):
    """Every param and every state key of opt_a matches opt_b. atol is relative
    to the largest magnitude in each tensor (when that exceeds 1): an element
    is a sum of terms as large as the tensor's largest, and where they cancel
    (a momentum buffer whose new gradient undoes it) a one-ulp difference in
    the terms, from another order of rounding, survives whole in a small
    result. Measured on the CPU against torch.optim's for-loop RMSprop
    (momentum 0.9, alpha 0.99, 10 steps): momentum buffers up to ~100 in
    magnitude differ by up to 7.7e-5 in elements near 0, both with and
    without FMA contraction (the same mismatch failed the capturable test on
    an H200 with a fixed atol of 2e-6)."""

    def close(a, b, what):
        a, b = (t.detach().to_dense() if t.is_sparse else t.detach() for t in (a, b))
        finite = b[torch.isfinite(b)].abs() if b.numel() else b
        tol = atol * max(1.0, finite.max().item()) if finite.numel() else atol
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=tol, equal_nan=True, msg=lambda m: f"{what}: {m}")

    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        close(pa, pb, f"param {i}")
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in keys:
            if key not in sa:
                continue
            a, b = sa[key], sb[key]
            if key == "step":
                assert float(a) == float(b), f"param {i}: step {float(a)} != {float(b)}"
                continue
            assert a.dtype == b.dtype, f"param {i} {key}: dtype {a.dtype} != {b.dtype}"
            close(a, b, f"param {i} {key}")


def tolerances(dtype):
    """rtol, atol for results that should agree up to rounding order."""
    return {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (2e-5, 2e-6),
        torch.bfloat16: (1.6e-2, 1e-2),
        torch.float16: (2e-3, 1e-3),
    }[dtype]


def native_cpu_isas():
    return fusedopt.info()["cpu_isas_supported"]
