"""Bad input gets the error torch.optim gives, or a clear one naming the
problem; NaN and Inf gradients give torch.optim's result element for element;
nothing crashes."""
import math

import pytest
import torch

import fusedopt
from helpers import ALGORITHMS, STATE_KEYS, assert_same_state, clone_params, make_optimizer, make_params, tolerances

BAD_ARGUMENTS = [
    ("SGD", dict(lr=-0.1)), ("SGD", dict(momentum=-0.5)), ("SGD", dict(weight_decay=-1.0)),
    ("SGD", dict(nesterov=True)), ("SGD", dict(momentum=0.9, nesterov=True, dampening=0.1)),
    ("SGD", dict(lr=torch.tensor([0.1, 0.2]))),
    ("Adagrad", dict(lr=-1.0)), ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(weight_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)), ("Adagrad", dict(eps=-1.0)),
    ("RMSprop", dict(lr=-1.0)), ("RMSprop", dict(eps=-1.0)), ("RMSprop", dict(momentum=-1.0)),
    ("RMSprop", dict(weight_decay=-1.0)), ("RMSprop", dict(alpha=-1.0)),
    ("Adam", dict(lr=-1.0)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1.0)),
    ("Adam", dict(betas=(0.9, torch.tensor(0.99)))), ("AdamW", dict(betas=(-0.1, 0.999))),
    ("AdamW", dict(lr=torch.tensor([1e-3, 1e-3]))),
]


@pytest.mark.parametrize("name,kwargs", BAD_ARGUMENTS, ids=[f"{n}-{k}" for n, k in BAD_ARGUMENTS])
def test_bad_hyperparameters_raise_torch_value_error(name, kwargs):
    with pytest.raises(ValueError) as theirs:
        getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    with pytest.raises(ValueError) as ours:
        getattr(fusedopt, name)([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_flags_torch_refuses_or_fusedopt_cannot_honour(name):
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(RuntimeError, match="differentiable"):
        getattr(fusedopt, name)(p, differentiable=True)
    with pytest.raises(ValueError, match="backend"):
        getattr(fusedopt, name)(p, backend="gpu-magic")
    if name != "RMSprop":
        with pytest.raises(RuntimeError, match="fused.*foreach"):
            getattr(fusedopt, name)(p, fused=True, foreach=True)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_sparse_gradient_is_refused(name):
    p = torch.nn.Parameter(torch.zeros(4))
    opt = getattr(fusedopt, name)([p])
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,opts", [
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1)), ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("AdamW", dict(lr=0.01, amsgrad=True)),
], ids=lambda v: v if isinstance(v, str) else None)
def test_nan_and_inf_gradients_match_torch(name, opts, dtype):
    base = make_params([(64,)], dtype)
    ours_params, torch_params = clone_params(base), clone_params(base)
    ours = make_optimizer(fusedopt, name, ours_params, opts)
    theirs = make_optimizer(torch.optim, name, torch_params, opts, foreach=False)
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-30, 1e30], dtype=torch.float64)
    for step in range(4):
        g = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        g[step * 7: step * 7 + 7] = special
        for params in (ours_params, torch_params):
            params[0].grad = g.to(dtype)
        ours.step()
        theirs.step()
    assert torch.isnan(ours_params[0]).any()
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(dtype))


def _adam_lists(n=2, dtype=torch.float32, shape=(5,)):
    make = lambda: [torch.zeros(shape, dtype=dtype) for _ in range(n)]  # noqa: E731
    return dict(params=make(), grads=make(), exp_avgs=make(), exp_avg_sqs=make(), max_exp_avg_sqs=[],
                state_steps=[torch.tensor(0.0) for _ in range(n)])


ADAM_SCALARS = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                    decoupled_weight_decay=False)


def _call_adam(lists):
    torch.ops.fusedopt.adam_(lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"],
                             lists["max_exp_avg_sqs"], lists["state_steps"], **ADAM_SCALARS)


@pytest.mark.parametrize("breakage,message", [
    (lambda l: l["grads"].pop(), "2 params but 1 grads"),
    (lambda l: l["exp_avgs"].append(torch.zeros(5)), "2 params but 3 exp_avgs"),
    (lambda l: l["state_steps"].pop(), "state_steps"),
    (lambda l: l["grads"].__setitem__(1, torch.zeros(5, dtype=torch.float64)), r"grads\[1\] is Double"),
    (lambda l: l["exp_avg_sqs"].__setitem__(0, torch.zeros(6)), r"exp_avg_sqs\[0\] has shape"),
    (lambda l: l["params"].__setitem__(1, torch.zeros(5, dtype=torch.float64)), "one call takes one dtype"),
    (lambda l: l["params"].__setitem__(0, torch.zeros(1).expand(5)), "share memory"),
    (lambda l: l["grads"].__setitem__(0, torch.zeros(5).to_sparse()), "SparseCPU"),
    (lambda l: l["state_steps"].__setitem__(0, torch.zeros(2)), "one-element"),
    (lambda l: l["state_steps"].__setitem__(0, torch.tensor(0, dtype=torch.int64)), "float32 or float64"),
], ids=["grads", "states", "steps", "grad-dtype", "state-shape", "param-dtype", "expanded", "sparse",
        "step-shape", "step-dtype"])
def test_op_rejects_inconsistent_lists(breakage, message):
    lists = _adam_lists()
    breakage(lists)
    with pytest.raises(RuntimeError, match=message):
        _call_adam(lists)


def test_op_rejects_integer_params():
    lists = _adam_lists(dtype=torch.int32)
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        _call_adam(lists)


@pytest.mark.parametrize("key,dtype,message", [
    ("grads", torch.float64, r"grads\[555\] is Double"),
    ("exp_avg_sqs", torch.float64, r"exp_avg_sqs\[555\] is Double"),
    ("state_steps", torch.int64, r"state_steps\[555\] must be float32 or float64"),
])
def test_op_names_a_late_bad_tensor_of_a_long_list(key, dtype, message):
    # Long lists are checked on several threads: the error still names the
    # tensor, and nothing (no step count either) has changed.
    lists = _adam_lists(n=600)
    lists[key][555] = lists[key][555].to(dtype)
    with pytest.raises(RuntimeError, match=message):
        _call_adam(lists)
    assert all(float(s) == 0 for s in lists["state_steps"])
    assert all(torch.equal(p, torch.zeros(5)) for p in lists["params"])


def test_op_checks_leave_tensors_untouched():
    lists = _adam_lists()
    lists["grads"][1] = torch.ones(5, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        _call_adam(lists)
    assert all(float(s) == 0 for s in lists["state_steps"])
    assert all(torch.equal(p, torch.zeros(5)) for p in lists["params"])
