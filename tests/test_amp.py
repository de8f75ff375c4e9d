"""AMP: torch.amp.GradScaler drives fusedopt optimizers through grad_scale /
found_inf (grads unscaled in the kernel and stored back, steps with an inf or
NaN skipped without creating or counting anything), against torch.optim
driven by the same scaler. CUDA cases skip without a GPU."""
import math

import pytest
import torch

import fusedopt
from helpers import STATE_KEYS, assert_same_state, clone_params, gradients, make_optimizer, make_params, tolerances

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and fusedopt.info()["cuda"]), reason="needs a GPU and fusedopt's CUDA kernels"))]
SHAPES = [(1,), (7,), (33,), (31, 17), (4099,)]
CASES = [
    ("SGD", dict(lr=0.05)), ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9)), ("RMSprop", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("AdamW", dict(lr=0.01, maximize=True)),
]
IDS = [name + "-" + "-".join(f"{k}={v}" for k, v in opts.items() if k != "lr") for name, opts in CASES]


def _train(library, name, opts, base, device, inf_steps=(0, 3), steps=6, **extra):
    """Steps driven by a GradScaler; the steps in inf_steps see an inf gradient
    (step 0: before any state exists). Returns the optimizer, params, the
    scaler and the grads as the last step left them."""
    params = clone_params(base)
    opt = make_optimizer(library, name, params, opts, **extra)
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 8, growth_interval=2)
    for step in range(steps):
        grads = gradients(params, step)
        if step in inf_steps:
            grads[-1][0] = math.inf
        loss = sum((p * g).sum() for p, g in zip(params, grads))  # d loss / d p = g
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        last_grads = [p.grad.clone() for p in params]
        opt.zero_grad()
    return opt, params, scaler, last_grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_grad_scaler_matches_torch(name, opts, dtype, device):
    base = make_params(SHAPES, dtype, device=device)
    ours, ours_params, our_scaler, our_grads = _train(fusedopt, name, opts, base, device)
    theirs, torch_params, their_scaler, their_grads = _train(torch.optim, name, opts, base, device, foreach=False)
    assert our_scaler.get_scale() == their_scaler.get_scale()
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(dtype))
    for a, b in zip(our_grads, their_grads):  # left unscaled, as GradScaler.unscale_ leaves them
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_optimizers_declare_amp_support():
    p = [torch.zeros(2, requires_grad=True)]
    assert all(getattr(fusedopt, name)(p, lr=0.1)._step_supports_amp_scaling
               for name in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW"))


def _adam_op(lists, **amp):
    torch.ops.fusedopt.adam_(lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"], [],
                             lists["steps"], [], lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.0, eps=1e-8,
                             amsgrad=False, maximize=False, decoupled_weight_decay=False, **amp)


def _adam_lists(device="cpu"):
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(6, 8, generator=g), torch.randn(100, generator=g)]
    # The first grad is a transposed view: walked through a copy that must be written back.
    grads = [torch.randn(8, 6, generator=g).t(), torch.randn(100, generator=g)]
    lists = dict(params=params, grads=grads, exp_avgs=[torch.rand(p.shape, generator=g) for p in params],
                 exp_avg_sqs=[torch.rand(p.shape, generator=g) for p in params],
                 steps=[torch.tensor(3.0), torch.tensor(3.0)])
    return {k: [t.to(device) if k != "steps" else t for t in v] for k, v in lists.items()}


def _copy(lists):
    return {k: [t.clone() for t in v] for k, v in lists.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_op_unscales_grads_in_place(device):
    scaled = _adam_lists(device)
    plain = _copy(scaled)
    scale = torch.tensor([1024.0], device=device)
    for g in scaled["grads"]:
        g.mul_(1024.0)
    _adam_op(scaled, grad_scale=scale)
    _adam_op(plain)
    for key in ("params", "grads", "exp_avgs", "exp_avg_sqs", "steps"):
        for a, b in zip(scaled[key], plain[key]):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("device", DEVICES)
def test_op_skips_everything_on_found_inf(device):
    lists = _adam_lists(device)
    before = _copy(lists)
    _adam_op(lists, grad_scale=torch.tensor([4.0], device=device), found_inf=torch.tensor([1.0], device=device))
    for key in lists:
        for a, b in zip(lists[key], before[key]):
            assert torch.equal(a, b), key


def test_op_rejects_a_bad_grad_scale():
    with pytest.raises(RuntimeError, match="grad_scale must be a one-element float32 tensor"):
        _adam_op(_adam_lists(), grad_scale=torch.tensor([2.0, 3.0]))
    with pytest.raises(RuntimeError, match="grad_scale must be a one-element float32 tensor"):
        _adam_op(_adam_lists(), grad_scale=torch.tensor([2.0], dtype=torch.float64))
