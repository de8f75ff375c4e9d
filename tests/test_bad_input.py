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


@pytest.mark.parametrize("name", ["RMSprop", "Adam", "AdamW"])
def test_sparse_gradient_is_refused_with_torchs_message(name):
    dense = torch.nn.Parameter(torch.zeros(4))
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(RuntimeError) as theirs:
        twin = torch.nn.Parameter(torch.zeros(4))
        twin.grad = torch.ones(4).to_sparse()
        getattr(torch.optim, name)([twin]).step()
    opt = getattr(fusedopt, name)([dense, p])
    dense.grad = torch.ones(4)
    p.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError) as ours:
        opt.step()
    assert str(ours.value) == str(theirs.value)
    assert torch.equal(dense.detach(), torch.zeros(4)) and len(opt.state) == 0


@pytest.mark.parametrize("name,opts", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)),
                                       ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
                                       ("Adagrad", dict(lr=0.1)), ("Adagrad", dict(lr=0.1, lr_decay=0.01,
                                                                                  initial_accumulator_value=0.1))])
def test_sparse_gradients_match_torch(name, opts):
    """An embedding with sparse=True beside dense params, as torch.optim.SGD and Adagrad take it."""
    results = []
    for library in (torch.optim, fusedopt):
        torch.manual_seed(0)
        model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(20, 4, sparse=True), "out": torch.nn.Linear(4, 1)})
        opt = getattr(library, name)(model.parameters(), **opts)
        for step in range(4):
            ids = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            model["out"](model["emb"](ids)).square().mean().backward()
            opt.step()
        results.append((opt, list(model.parameters())))
    (theirs, torch_params), (ours, ours_params) = results
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(torch.float32))


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
                             lists["max_exp_avg_sqs"], lists["state_steps"], [], **ADAM_SCALARS)


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


def _fresh(n=2, shape=(5,), value=0.0):
    return [torch.full(shape, value) for _ in range(n)]


def _steps(n=2):
    return [torch.tensor(0.0) for _ in range(n)]


# Each op with a state list its options need left empty: the op must refuse
# before touching anything (it used to read past the list and crash).
MISSING_STATE = [
    ("adam amsgrad", lambda p, g: torch.ops.fusedopt.adam_(p, g, _fresh(), _fresh(), [], _steps(), [], **dict(
        ADAM_SCALARS, amsgrad=True)), "max_exp_avg_sqs"),
    ("adam exp_avgs", lambda p, g: torch.ops.fusedopt.adam_(p, g, [], _fresh(), [], _steps(), [], **ADAM_SCALARS),
     "exp_avgs"),
    ("sgd momentum", lambda p, g: torch.ops.fusedopt.sgd_(p, g, [], [], [], lr=0.1, weight_decay=0.0, momentum=0.9,
                                                          dampening=0.0, nesterov=False, maximize=False,
                                                          first_step=[1, 1]), "momentum_buffers"),
    ("adagrad", lambda p, g: torch.ops.fusedopt.adagrad_(p, g, [], _steps(), [], lr=0.1, lr_decay=0.0,
                                                         weight_decay=0.0, eps=1e-10, maximize=False), "state_sums"),
    ("rmsprop", lambda p, g: torch.ops.fusedopt.rmsprop_(p, g, [], [], [], _steps(), [], lr=0.1, alpha=0.9, eps=1e-8,
                                                         weight_decay=0.0, momentum=0.0, centered=False,
                                                         maximize=False), "square_avgs"),
    ("rmsprop centered", lambda p, g: torch.ops.fusedopt.rmsprop_(p, g, _fresh(), [], [], _steps(), [], lr=0.1,
                                                                  alpha=0.9, eps=1e-8, weight_decay=0.0,
                                                                  momentum=0.0, centered=True, maximize=False),
     "grad_avgs"),
    ("rmsprop momentum", lambda p, g: torch.ops.fusedopt.rmsprop_(p, g, _fresh(), [], [], _steps(), [], lr=0.1,
                                                                  alpha=0.9, eps=1e-8, weight_decay=0.0,
                                                                  momentum=0.9, centered=False, maximize=False),
     "momentum_buffers"),
    ("classic adagrad", lambda p, g: torch.ops.fusedopt.classic_adagrad_(p, g, [], [], alpha=0.1, lambdaa=0.0,
                                                                         delta=1e-6), "rs"),
    ("classic rmsprop", lambda p, g: torch.ops.fusedopt.classic_rmsprop_(p, g, [], [], [], alpha=0.1, lambdaa=0.0,
                                                                         rho=0.9, delta=1e-6, epsilon=0.0), "rs"),
    ("classic adam", lambda p, g: torch.ops.fusedopt.classic_adam_(p, g, [], [], _fresh(), _steps(), alpha=0.1,
                                                                   lambdaa=0.0, rho1=0.9, rho2=0.99, delta=1e-6),
     "ss"),
]


@pytest.mark.parametrize("call,name", [(c, n) for _, c, n in MISSING_STATE], ids=[i for i, _, _ in MISSING_STATE])
def test_op_refuses_a_missing_state_list(call, name):
    params, grads = _fresh(value=1.0), _fresh(value=0.5)
    with pytest.raises(RuntimeError, match=rf"2 params but 0 {name} \(the options given need this state\)"):
        call(params, grads)
    assert all(torch.equal(p, torch.ones(5)) for p in params)


@pytest.mark.parametrize("where", ["grads", "params", "state_steps"])
def test_op_refuses_a_meta_tensor_beside_cpu_tensors(where):
    lists = _adam_lists()
    if where == "state_steps":
        lists["params"][1] = torch.empty(5, device="meta")  # steps may be CPU tensors; a param may not be meta
    else:
        lists[where][1] = torch.empty(5, device="meta")
    with pytest.raises(RuntimeError, match=r"\[1\] is on meta but params\[0\] is on cpu"):
        _call_adam(lists)
    assert all(float(s) == 0 for s in lists["state_steps"])


@pytest.mark.parametrize("state", ["exp_avgs", "exp_avg_sqs", "grads"])
def test_op_refuses_an_operand_that_aliases_its_param(state):
    lists = _adam_lists()
    lists[state][1] = lists["params"][1] if state != "grads" else lists["params"][1].view(5)
    with pytest.raises(RuntimeError, match=rf"params\[1\] and {state}\[1\] share memory"):
        _call_adam(lists)
    assert all(float(s) == 0 for s in lists["state_steps"])


def test_op_refuses_states_that_alias_each_other():
    lists = _adam_lists()
    lists["exp_avg_sqs"][0] = lists["exp_avgs"][0]
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] and exp_avg_sqs\[0\] share memory"):
        _call_adam(lists)


def test_classic_regularization_gradient_may_be_the_weight():
    """The seed document's L2 term: dr = w, read before w is written."""
    w = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dw = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = w - 0.1 * (dw + 0.5 * w)
    torch.ops.fusedopt.classic_sgd_([w], [dw], [w], [], alpha=0.1, lambdaa=0.5, epsilon=0.0, nesterov=False)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_op_refuses_an_invalid_step_count(value):
    lists = _adam_lists()
    lists["state_steps"][1] = torch.tensor(value)
    with pytest.raises(ValueError, match=r"state_steps\[1\] is .*; a step count must be a finite number >= 0"):
        _call_adam(lists)
    assert float(lists["state_steps"][0]) == 0 and all(torch.equal(p, torch.zeros(5)) for p in lists["params"])


def test_state_dict_with_a_negative_step_is_refused_at_the_step():
    """torch.optim.Adam raises on it (ZeroDivisionError); fusedopt wrote NaN into the params."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = fusedopt.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    state = opt.state_dict()
    state["state"][0]["step"] = torch.tensor(-1.0)
    opt.load_state_dict(state)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="step count"):
        opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_beta1_of_one_set_after_construction_raises_like_torch(name):
    results = []
    for library in (torch.optim, fusedopt):
        p = torch.nn.Parameter(torch.ones(4))
        opt = getattr(library, name)([p], lr=0.1)
        opt.param_groups[0]["betas"] = (1.0, 0.999)
        p.grad = torch.ones(4)
        with pytest.raises(ZeroDivisionError):
            opt.step()
        results.append((p.detach().clone(), dict(opt.state)))
    assert torch.equal(results[1][0], torch.ones(4)) and results[1][1] == {}


def test_error_names_the_param_group_and_index():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))]}, {"params": [torch.nn.Parameter(torch.zeros(2))]},
              {"params": [torch.nn.Parameter(torch.zeros(4))]}]
    opt = fusedopt.Adam(groups, lr=0.1)
    for g in groups:
        g["params"][0].grad = torch.zeros_like(g["params"][0])
    opt.step()
    opt.state[groups[2]["params"][0]]["exp_avg"] = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] is the exp_avg of param_groups\[2\]\['params'\]\[0\]"):
        opt.step()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_the_same_param_twice_is_refused(name):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"the same parameter twice \(params 0 and 1\)"):
        getattr(fusedopt, name)([p, p])


def test_overlapping_params_are_refused_and_nothing_is_added():
    base = torch.zeros(10)
    a, b = torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])
    with pytest.raises(ValueError, match=r"param 0 of param_groups\[0\] and param 1 of param_groups\[0\] share memory"):
        fusedopt.SGD([a, b], lr=0.1)
    opt = fusedopt.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1


def test_interleaved_views_are_distinct_params_and_match_torch():
    """p[::2] and p[1::2] share a storage and a span but no element."""
    results = []
    for library in (torch.optim, fusedopt):
        base = torch.arange(12, dtype=torch.float32)
        even, odd = base[0::2], base[1::2]
        even.requires_grad_(True)
        odd.requires_grad_(True)
        opt = library.SGD([even, odd], lr=0.1, momentum=0.9, weight_decay=0.1)
        for step in range(3):
            even.grad = torch.full((6,), 1.0 + step)
            odd.grad = torch.full((6,), -2.0 + step)
            opt.step()
        results.append(base.clone())
    torch.testing.assert_close(results[1], results[0])


def test_unknown_cpu_isa_variable_is_an_error():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", "import fusedopt"], capture_output=True, text=True,
                            env={**__import__("os").environ, "FUSEDOPT_CPU_ISA": "avx3"})
    assert result.returncode != 0 and "FUSEDOPT_CPU_ISA='avx3' is not one of" in result.stderr


def test_unknown_cpu_helpers_variable_is_an_error():
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", "import fusedopt"], capture_output=True, text=True,
                            env={**__import__("os").environ, "FUSEDOPT_CPU_HELPERS": "omp"})
    assert result.returncode != 0 and "FUSEDOPT_CPU_HELPERS='omp' is not one of" in result.stderr


def test_centered_rmsprop_with_alpha_zero_has_no_nan():
    """v - c^2 is exactly 0 in exact arithmetic there; rounding must not make it NaN."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4099, generator=g))]
    reference = [torch.nn.Parameter(params[0].detach().clone())]
    ours = fusedopt.RMSprop(params, lr=0.01, alpha=0.0, centered=True)
    ref = fusedopt.RMSprop(reference, lr=0.01, alpha=0.0, centered=True, backend="reference")
    for step in range(3):
        grad = torch.randn(4099, generator=g) * 3
        params[0].grad, reference[0].grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert torch.isfinite(params[0]).all()
    # The update is g / (sqrt(max(v - c^2, 0)) + eps) with v - c^2 a rounding
    # residue: huge, and sensitive to the last bit of the residue.
    torch.testing.assert_close(params[0], reference[0], rtol=1e-4, atol=1e-4)
