"""The native ops as torch sees them: schemas, fake kernels, opcheck,
torch.compile, one call per group, the build report, and the reference
fallback."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedopt
from helpers import make_params

pytestmark = pytest.mark.skipif(not fusedopt.info()["native"], reason="native extension not loaded")


def _lists(dtype, shapes=((3,), (0,), (70,)), seed=0):
    return [t.requires_grad_(False) for t in make_params(shapes, dtype, seed=seed)]


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _op_calls(dtype):
    """(op, args, kwargs) for every op and variant, on fresh tensors."""
    p, g = _lists(dtype), _lists(dtype, seed=1)
    st = lambda: [torch.zeros(s.shape, dtype=dtype) for s in p]  # noqa: E731
    pos = lambda: [t.abs() for t in _lists(dtype, seed=2)]  # noqa: E731
    steps = lambda: [torch.tensor(float(i)) for i in range(len(p))]  # noqa: E731
    ops = torch.ops.fusedopt
    adam = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-8, maximize=False)
    return [
        (ops.adam_.default, (p, g, st(), pos(), pos(), steps(), []), dict(adam, amsgrad=True, decoupled_weight_decay=True)),
        (ops.adam_.default, (p, g, st(), pos(), [], steps(), []), dict(adam, amsgrad=False, decoupled_weight_decay=False)),
        (ops.sgd_.default, (p, g, st(), [], []), dict(lr=0.1, weight_decay=0.0, momentum=0.9, dampening=0.0, nesterov=True,
                                              maximize=True, first_step=[1, 0, 1])),
        (ops.sgd_.default, (p, g, [], [], []), dict(lr=0.1, weight_decay=0.1, momentum=0.0, dampening=0.0, nesterov=False,
                                            maximize=False, first_step=[])),
        (ops.adagrad_.default, (p, g, pos(), steps(), []), dict(lr=0.1, lr_decay=0.01, weight_decay=0.0, eps=1e-10,
                                                            maximize=False)),
        (ops.rmsprop_.default, (p, g, pos(), st(), st(), steps(), []), dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.0,
                                                                        momentum=0.9, centered=True, maximize=False)),
        (ops.adam_.flat, (p, g, _flat(st()), _flat(pos()), _flat(pos()), _flat(steps()), []),
         dict(adam, amsgrad=True, decoupled_weight_decay=False)),
        (ops.sgd_.flat, (p, g, _flat(st()), None, []), dict(lr=0.1, weight_decay=0.1, momentum=0.9, dampening=0.0,
                                                           nesterov=False, maximize=False, first_step=[0, 1, 0])),
        (ops.sgd_.flat, (p, g, None, None, []), dict(lr=0.1, weight_decay=0.1, momentum=0.0, dampening=0.0,
                                                    nesterov=False, maximize=False, first_step=[])),
        (ops.adagrad_.flat, (p, g, _flat(pos()), _flat(steps()), []), dict(lr=0.1, lr_decay=0.01, weight_decay=0.0,
                                                                          eps=1e-10, maximize=False)),
        (ops.rmsprop_.flat, (p, g, _flat(pos()), None, _flat(st()), _flat(steps()), []),
         dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.0, centered=True, maximize=False)),
        (ops.traffic_.default, (p, g, st(), st(), []), {}),
        (ops.classic_sgd_.default, (p, g, g, st()), dict(alpha=0.1, lambdaa=0.5, epsilon=0.9, nesterov=True)),
        (ops.classic_adagrad_.default, (p, g, [], pos()), dict(alpha=0.1, lambdaa=0.0, delta=1e-6)),
        (ops.classic_rmsprop_.default, (p, g, g, pos(), st()), dict(alpha=0.01, lambdaa=0.5, rho=0.9, delta=1e-6,
                                                                    epsilon=0.5)),
        (ops.classic_adam_.default, (p, g, g, st(), pos(), steps()), dict(alpha=0.01, lambdaa=0.5, rho1=0.9, rho2=0.99,
                                                                          delta=1e-6)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("index", range(16))
def test_opcheck(index, dtype):
    op, args, kwargs = _op_calls(dtype)[index]
    torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("index", [6, 7, 8, 9, 10])
def test_flat_overloads_step_as_the_list_ops(index):
    """Each `.flat` call (flat states and step counts) against the list op on
    the same values: bit for bit, states and counts included."""
    calls = _op_calls(torch.float32)
    op, args, kwargs = calls[index]
    list_op = getattr(torch.ops.fusedopt, op._schema.name.split("::")[1]).default
    params = args[0]
    flat_args = [[t.clone() for t in a] if isinstance(a, list) else None if a is None else a.clone()
                 for a in args]

    def unflat(a, scalars):
        if a is None:
            return []
        sizes = [1 if scalars else p.numel() for p in params]
        return [t.reshape(() if scalars else p.shape).clone() for t, p in zip(a.split(sizes), params)]

    names = [arg.name for arg in op._schema.arguments][:len(args)]
    list_args = [[t.clone() for t in a] if isinstance(a, list) else unflat(a, name == "state_steps")
                 for a, name in zip(args, names)]
    op(*flat_args, **kwargs)
    list_op(*list_args, **kwargs)
    for name, flat, listed in zip(names, flat_args, list_args):
        if flat is None:
            continue
        if isinstance(flat, torch.Tensor):
            flat = unflat(flat, name == "state_steps")
        for a, b in zip(flat, listed):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("what, match", [
    ("short", r"exp_avgs has 72 elements but the 3 params need 73"),
    ("2-d", r"exp_avgs must be one contiguous 1-d tensor"),
    ("steps", r"state_steps has 2 elements but the 3 params need 3"),
    ("param", r"params\[0\] must be contiguous beside flat states"),
])
def test_flat_overload_refuses_a_flat_state_of_the_wrong_size(what, match):
    op, args, kwargs = _op_calls(torch.float32)[6]
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, companions = args
    if what == "short":
        exp_avgs = exp_avgs[1:]
    elif what == "2-d":
        exp_avgs = exp_avgs.reshape(1, -1)
    elif what == "steps":
        steps = steps[1:]
    else:
        params = [torch.zeros(3, 2).t()] + params[1:]
        grads = [torch.zeros(2, 3)] + grads[1:]
        exp_avgs = exp_avgs.new_zeros(exp_avgs.numel() + 3)
        exp_avg_sqs, max_sqs = (t.new_zeros(t.numel() + 3) for t in (exp_avg_sqs, max_sqs))
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match=match):
        op(params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps, companions, **kwargs)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_torch_compile_traces_a_step(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    twin = torch.nn.Linear(8, 4)
    twin.load_state_dict(model.state_dict())
    kwargs = dict(lr=0.01, momentum=0.9) if name != "Adam" else dict(lr=0.01)
    compiled_opt = getattr(fusedopt, name)(model.parameters(), **kwargs)
    eager_opt = getattr(fusedopt, name)(twin.parameters(), **kwargs)
    compiled_step = torch.compile(compiled_opt.step, backend="aot_eager")
    x = torch.randn(16, 8)
    for _ in range(3):
        for m, step in ((model, compiled_step), (twin, eager_opt.step)):
            m.zero_grad()
            m(x).square().mean().backward()
            step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_one_native_call_per_group_and_dtype(monkeypatch):
    calls = []
    real = torch.ops.fusedopt.adam_

    class Counting:
        def __call__(self, *args, **kwargs):
            calls.append(len(args[0]))
            return real(*args, **kwargs)

    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(50)] + [torch.nn.Parameter(torch.randn(3).double())]
    opt = fusedopt.Adam([{"params": params[:30]}, {"params": params[30:]}])
    for p in params:
        p.grad = torch.ones_like(p)
    monkeypatch.setattr(torch.ops.fusedopt, "adam_", Counting())
    opt.step()
    assert sorted(calls) == [1, 20, 30]


def test_info_reports_the_build():
    info = fusedopt.info()
    assert info["native"] and info["load_error"] is None
    assert info["cpu_isa"] in info["cpu_isas_supported"]
    assert "baseline" in info["cpu_isas_supported"]
    with pytest.raises(RuntimeError, match="unknown or unsupported"):
        fusedopt.set_cpu_isa("sse9")


def test_meta_device_falls_back_to_reference_with_one_warning():
    params = [torch.nn.Parameter(torch.empty(4, device="meta")) for _ in range(2)]
    opt = fusedopt.RMSprop(params, lr=0.1)
    for p in params:
        p.grad = torch.empty(4, device="meta")
    with pytest.warns(RuntimeWarning, match="no native rmsprop_ kernel for meta"):
        opt.step()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # warned once only
    assert opt.state[params[0]]["square_avg"].device.type == "meta"


def _run_python(code, **env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr


def test_environment_variable_forces_reference():
    _run_python("""
        import torch, fusedopt
        calls = []
        torch.ops.fusedopt.adam_ = lambda *a, **k: calls.append(1)
        ours, theirs = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        opt, twin = fusedopt.Adam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
        ours.grad, theirs.grad = torch.ones(3), torch.ones(3)
        opt.step(); twin.step()
        assert not calls and opt.backend == "reference", (calls, opt.backend)
        assert fusedopt.info()["default_backend"] == "reference"
        torch.testing.assert_close(ours, theirs)
    """, FUSEDOPT_BACKEND="reference")


def test_missing_extension_falls_back_and_warns():
    _run_python("""
        import sys, warnings
        sys.modules["fusedopt._C"] = None  # makes `from . import _C` fail as a broken build would
        import torch, fusedopt
        assert not fusedopt.info()["native"] and "fusedopt._C" in fusedopt.info()["load_error"]
        base = torch.randn(10, generator=torch.Generator().manual_seed(0))
        ours, theirs = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
        a, b = fusedopt.AdamW([ours], lr=0.1), torch.optim.AdamW([theirs], lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                g = torch.randn(10, generator=torch.Generator().manual_seed(step + 1))
                ours.grad, theirs.grad = g.clone(), g.clone()
                a.step(); b.step()
        assert len(caught) == 1 and "did not load" in str(caught[0].message), [str(w.message) for w in caught]
        torch.testing.assert_close(ours, theirs)
    """)
