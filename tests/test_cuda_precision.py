"""The low-precision storage modes and 8-bit states on CUDA, against the CPU
kernels (themselves tested against fusedopt.reference): the same per-element
math (fusedopt/rounding.h, fusedopt/quantize.h, the update functors), the
random bits keyed by element index, float32 without contraction on both
(-ffp-contract=off, --fmad=false), so every param and state is bitwise the
CPU's."""
import os

import pytest
import torch

import fusedopt
from helpers import ALGORITHMS, clone_params, gradients, make_params
from test_precision import OPTIONS, _mode_id

pytestmark = [
    pytest.mark.skipif(not (torch.cuda.is_available() and fusedopt.info()["cuda"]), reason="needs a CUDA build and a GPU"),
    # Until these pass on a GPU the kernel stays behind FUSEDOPT_CUDA_MODES=1 (csrc/precision.cpp).
    pytest.mark.skipif(os.environ.get("FUSEDOPT_CUDA_MODES") != "1", reason="FUSEDOPT_CUDA_MODES=1 not set"),
]

MODES = [  # test_precision's, and 8-bit states with them
    dict(param_precision="stochastic"),
    dict(param_precision="compensated"),
    dict(param_precision="master"),
    dict(state_dtype=torch.bfloat16),
    dict(param_precision="stochastic", state_dtype=torch.bfloat16, stochastic_states=True),
    dict(param_precision="master", state_dtype=torch.bfloat16, stochastic_states=True),
    dict(state_dtype="8bit"),
    dict(param_precision="stochastic", state_dtype="8bit"),
    dict(param_precision="master", state_dtype="8bit"),
]
# Odd sizes, one over a CUDA chunk (65536), one under the 8-bit threshold.
SHAPES = [(7,), (300,), (70, 129), (65536 + 4099,)]


def _run(name, params, mode, steps=3, **extra):
    opt = getattr(fusedopt, name)(params, **OPTIONS[name], seed=11, **mode, **extra)
    for step in range(steps):
        for p, g in zip(params, gradients([q.cpu() for q in params], step)):
            p.grad = g.to(p.device)
        opt.step()
    return opt


def _assert_bitwise(cpu_opt, cpu_params, cuda_opt, cuda_params):
    for p, q in zip(cpu_params, cuda_params):
        assert torch.equal(p.detach(), q.detach().cpu()), (p.shape, (p.detach().float() - q.detach().cpu().float()).abs().max())
        assert set(cpu_opt.state[p]) == set(cuda_opt.state[q])
        for key, value in cpu_opt.state[p].items():
            other = cuda_opt.state[q][key].cpu()
            assert value.dtype == other.dtype and torch.equal(value, other), (p.shape, key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("mode", MODES, ids=[_mode_id(m) for m in MODES])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_cuda_is_the_cpu_bit_for_bit(name, mode, dtype):
    if dtype == torch.float32 and mode.get("param_precision") in ("compensated", "master"):
        pytest.skip("compensated and master params are for 16-bit params")
    base = make_params(SHAPES, dtype)
    on_cpu = clone_params(base)
    on_cuda = [p.detach().cuda().requires_grad_(True) for p in base]
    cpu_opt = _run(name, on_cpu, mode)
    cuda_opt = _run(name, on_cuda, mode)
    _assert_bitwise(cpu_opt, on_cpu, cuda_opt, on_cuda)


@pytest.mark.parametrize("mode", [dict(param_precision="master"), dict(state_dtype="8bit")], ids=_mode_id)
def test_grad_scaler_with_modes(mode):
    """AMP: the grads are unscaled in the kernel; an inf skips the step."""
    base = make_params(SHAPES, torch.bfloat16)
    a = [p.detach().cuda().requires_grad_(True) for p in base]
    b = [p.detach().cuda().requires_grad_(True) for p in base]
    opt_a = fusedopt.AdamW(a, lr=0.01, **mode)
    opt_b = fusedopt.AdamW(b, lr=0.01, **mode)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    for step in range(3):
        grads = [g.cuda() for g in gradients(base, step)]
        for p, g in zip(a, grads):
            p.grad = g * 1024.0
        for p, g in zip(b, grads):
            p.grad = g.clone()
        scaler.step(opt_a)
        scaler.update(1024.0)
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a[0].grad = torch.full_like(a[0], float("inf"))
    before = [p.detach().clone() for p in a]
    scaler.step(opt_a)
    assert all(torch.equal(p, q) for p, q in zip(a, before))


@pytest.mark.parametrize("mode", [dict(param_precision="master"), dict(state_dtype="8bit"),
                                  dict(param_precision="compensated", state_dtype=torch.bfloat16)], ids=_mode_id)
def test_capturable_with_modes(mode):
    """capturable: the step scalars come from the device's step count (float32
    there, float64 on the host), so params agree to rounding."""
    base = make_params(SHAPES, torch.bfloat16)
    a = [p.detach().cuda().requires_grad_(True) for p in base]
    b = [p.detach().cuda().requires_grad_(True) for p in base]
    opt_a = fusedopt.Adam(a, lr=0.01, capturable=True, **mode)
    opt_b = fusedopt.Adam(b, lr=0.01, **mode)
    for step in range(3):
        grads = [g.cuda() for g in gradients(base, step)]
        for p, g in zip(a, grads):
            p.grad = g
        for p, g in zip(b, grads):
            p.grad = g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.float(), q.float(), rtol=2e-2, atol=1e-3)


def test_stochastic_rounding_with_capturable_is_refused():
    p = [torch.nn.Parameter(torch.randn(64, device="cuda", dtype=torch.bfloat16))]
    opt = fusedopt.Adam(p, capturable=True, param_precision="stochastic")
    p[0].grad = torch.randn_like(p[0])
    with pytest.raises(RuntimeError, match="capturable"):
        opt.step()
