"""What a torch.optim user relies on beyond the math: param groups, lr
schedulers, tensor lr, closures, zero_grad, hooks, mixed dtypes, complex
params, and params without gradients."""
import pytest
import torch

import fusedopt
from helpers import (ALGORITHMS, STATE_KEYS, assert_same_state, clone_params, gradients, make_optimizer,
                     make_params, run_steps, tolerances)

SHAPES = [(7,), (5, 3), (1,)]
BASIC = {"SGD": dict(lr=0.05, momentum=0.9), "Adagrad": dict(lr=0.05), "RMSprop": dict(lr=0.01, momentum=0.5),
         "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01)}
FP32 = tolerances(torch.float32)


def _pair(name, params, opts=None, torch_opts=None, **kwargs):
    ours_params, torch_params = clone_params(params), clone_params(params)
    opts = BASIC[name] if opts is None else opts
    ours = make_optimizer(fusedopt, name, ours_params, opts, **kwargs)
    theirs = make_optimizer(torch.optim, name, torch_params, opts, foreach=False, **kwargs)
    return ours, ours_params, theirs, torch_params


@pytest.mark.parametrize("name", ALGORITHMS)
def test_constructor_defaults_match_torch(name):
    p = [torch.nn.Parameter(torch.zeros(2))]
    ours = getattr(fusedopt, name)(p)
    theirs = getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))])
    assert ours.defaults == theirs.defaults


@pytest.mark.parametrize("name", ALGORITHMS)
def test_param_groups_and_add_param_group(name):
    base = make_params(SHAPES + [(4,)], torch.float32)
    results = []
    for library in (fusedopt, torch.optim):
        params = clone_params(base)
        extra = {} if library is fusedopt else {"foreach": False}
        opt = getattr(library, name)([{"params": params[:2]}, {"params": params[2:3], "lr": 0.001}],
                                     **BASIC[name], **extra)
        run_steps(opt, params[:3], 3)
        opt.add_param_group({"params": params[3:], "lr": 0.02, "weight_decay": 0.1})
        try:
            run_steps(opt, params, 3, start=3)
        except KeyError as e:
            if library is fusedopt:
                raise
            # torch 2.11's Adagrad creates no state for params added later
            pytest.skip(f"torch.optim.{name} {torch.__version__} fails after add_param_group: KeyError {e}")
        results.append((opt, params))
    assert_same_state(*results[0], *results[1], STATE_KEYS[name], *FP32)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_lr_scheduler(name):
    ours, ours_params, theirs, torch_params = _pair(name, make_params(SHAPES, torch.float32))
    schedulers = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10,
                                                       cycle_momentum=name != "Adagrad")
                  for o in (ours, theirs)]
    for step in range(10):
        for opt, params, sched in ((ours, ours_params, schedulers[0]), (theirs, torch_params, schedulers[1])):
            for p, g in zip(params, gradients(params, step)):
                p.grad = g
            opt.step()
            sched.step()
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_tensor_lr(name):
    opts = dict(BASIC[name], lr=torch.tensor(0.01))
    ours, ours_params, theirs, torch_params = _pair(name, make_params(SHAPES, torch.float32), opts)
    run_steps(ours, ours_params, 5)
    run_steps(theirs, torch_params, 5)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)


def test_adam_tensor_betas():
    opts = dict(lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.95)))
    ours, ours_params, theirs, torch_params = _pair("Adam", make_params(SHAPES, torch.float32), opts)
    run_steps(ours, ours_params, 5)
    run_steps(theirs, torch_params, 5)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *FP32)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_closure_zero_grad_and_hooks(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    reference_model = torch.nn.Linear(4, 3)
    reference_model.load_state_dict(model.state_dict())
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    ours = make_optimizer(fusedopt, name, model.parameters(), BASIC[name])
    theirs = make_optimizer(torch.optim, name, reference_model.parameters(), BASIC[name], foreach=False)
    calls = []
    ours.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    ours.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    for _ in range(4):
        for m, opt in ((model, ours), (reference_model, theirs)):
            def closure(m=m, opt=opt):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(m(x), y)
                loss.backward()
                return loss
            loss = opt.step(closure)
            assert isinstance(loss, torch.Tensor)
    assert calls == ["pre", "post"] * 4
    assert_same_state(ours, list(model.parameters()), theirs, list(reference_model.parameters()),
                      STATE_KEYS[name], *FP32)
    ours.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ALGORITHMS)
def test_params_without_grad_are_untouched(name):
    params = clone_params(make_params(SHAPES, torch.float32))
    before = [p.detach().clone() for p in params]
    opt = make_optimizer(fusedopt, name, params, BASIC[name])
    for p, g in zip(params[1:], gradients(params[1:], 0)):
        p.grad = g
    opt.step()
    assert torch.equal(params[0].detach(), before[0])
    assert not torch.equal(params[1].detach(), before[1])
    if name != "Adagrad":  # Adagrad creates every param's state up front, as torch does
        assert params[0] not in opt.state


@pytest.mark.parametrize("name", ALGORITHMS)
def test_mixed_dtypes_in_one_group(name):
    base = (make_params([(7,)], torch.float32) + make_params([(5,)], torch.float64, seed=1)
            + make_params([(9,)], torch.bfloat16, seed=2) + make_params([(3,)], torch.float32, seed=3))
    ours, ours_params, theirs, torch_params = _pair(name, base)
    run_steps(ours, ours_params, 4)
    run_steps(theirs, torch_params, 4)
    # bfloat16 is checked against the for-loop in test_parity_torch; here only
    # that the grouping sends every tensor through with its own dtype.
    for i in (0, 1, 3):
        assert_same_state(ours, ours_params[i:i + 1], theirs, torch_params[i:i + 1], STATE_KEYS[name],
                          *tolerances(base[i].dtype))
    torch.testing.assert_close(ours_params[2], torch_params[2], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_complex_params_match_torch(name):
    g = torch.Generator().manual_seed(5)
    base = [torch.randn(6, dtype=torch.complex64, generator=g), torch.randn(2, 3, dtype=torch.complex64, generator=g)]
    ours, ours_params, theirs, torch_params = _pair(name, base)
    run_steps(ours, ours_params, 5)
    run_steps(theirs, torch_params, 5)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *FP32)


def test_float64_default_dtype_keeps_step_in_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, ours_params, theirs, torch_params = _pair("Adam", make_params(SHAPES, torch.float64))
        run_steps(ours, ours_params, 3)
        run_steps(theirs, torch_params, 3)
    finally:
        torch.set_default_dtype(previous)
    assert ours.state[ours_params[0]]["step"].dtype == torch.float64
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *tolerances(torch.float64))


def test_real_model_trains_like_torch():
    """A small MLP trained 30 steps: same losses and weights as torch.optim.AdamW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(64, 8)
    y = x.sum(dim=1, keepdim=True).sin()
    ours, theirs = fusedopt.AdamW(model.parameters(), lr=1e-2), torch.optim.AdamW(twin.parameters(), lr=1e-2)
    losses = {"ours": [], "torch": []}
    for _ in range(30):
        for key, m, opt in (("ours", model, ours), ("torch", twin, theirs)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            opt.step()
            losses[key].append(loss.item())
    assert losses["ours"][-1] < 0.5 * losses["ours"][0]
    torch.testing.assert_close(losses["ours"], losses["torch"], rtol=1e-4, atol=1e-6)
