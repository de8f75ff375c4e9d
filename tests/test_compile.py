"""torch.compile of a function that calls opt.step(): fullgraph, one
fusedopt op call per (group, device, dtype) in the captured graph (per
fusedopt.optimizer._TRACED_CALL_PARAMS params of a bigger bucket), and the
results of the eager step (bitwise) and of torch.optim (to rounding)."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import fusedopt
from helpers import (STATE_KEYS, assert_same_state, clone_params, fusedopt_twins, gradients, make_params, run_steps,
                     tolerances)

pytestmark = pytest.mark.skipif(not fusedopt.info()["native"], reason="native extension not loaded")

SHAPES = [(7,), (33,), (5, 3), (1,)]
STEPS = 4
FP32 = tolerances(torch.float32)

CASES = {
    "SGD-momentum": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "SGD-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "SGD-plain": ("SGD", dict(lr=0.05, maximize=True)),
    "Adam": ("Adam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)),
    "AdamW-amsgrad": ("AdamW", dict(lr=0.01, amsgrad=True)),
    "Adagrad": ("Adagrad", dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1)),
    "RMSprop-centered-momentum": ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.9)),
    "RMSprop": ("RMSprop", dict(lr=0.01, weight_decay=0.1)),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles the same step() code: dynamo's per-code cache
    (and recompile limit) starts empty for each."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fusedopt_calls(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and isinstance(n.target, (torch._ops.OpOverloadPacket, torch._ops.OpOverload))
            and str(n.target).startswith("fusedopt.")]


class GraphRecorder(CompileCounter):
    """Counts the frames compiled and keeps the fusedopt op calls of each graph."""

    def __init__(self):
        super().__init__()
        self.op_calls = []

    def __call__(self, gm, example_inputs):
        self.op_calls.append(_fusedopt_calls(gm))
        return super().__call__(gm, example_inputs)


def _steps(opt, params, step_fn, steps=STEPS, start=0):
    run_steps(opt, params, steps, start=start, step_fn=step_fn)


def _three(name, opts, shapes=SHAPES, dtype=torch.float32, **extra):
    """A compiled fusedopt optimizer, an eager one and torch.optim's, on equal params."""
    start = make_params(shapes, dtype)
    runs = []
    for library in (fusedopt, fusedopt, torch.optim):
        params = clone_params(start)
        runs.append((getattr(library, name)(params, **opts, **(extra if library is fusedopt else {})), params))
    return runs


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("case", list(CASES))
def test_fullgraph_step_matches_eager_and_torch(case, tensor_lr):
    name, opts = CASES[case]
    if tensor_lr:
        opts = dict(opts, lr=torch.tensor(opts["lr"]))
    (compiled, cparams), (eager, eparams), (theirs, tparams) = _three(name, opts)
    recorder = GraphRecorder()
    step = torch.compile(lambda: compiled.step(), backend=recorder, fullgraph=True)
    _steps(compiled, cparams, step)
    _steps(eager, eparams, eager.step)
    _steps(theirs, tparams, theirs.step)
    # A new momentum buffer takes the gradient: SGD's first step compiles on
    # its own, as torch.optim.SGD's does.
    assert recorder.frame_count == (2 if name == "SGD" and opts.get("momentum") else 1)
    assert [len(calls) for calls in recorder.op_calls] == [1] * recorder.frame_count
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS[name], 0, 0)
    assert_same_state(compiled, cparams, theirs, tparams, STATE_KEYS[name], *FP32)


def test_inductor_step_matches_eager():
    """The default backend, end to end: its graph holds the op and nothing
    that copies a param or a state."""
    (compiled, cparams), (eager, eparams), _ = _three("AdamW", dict(lr=0.01, amsgrad=True))
    step = torch.compile(compiled.step, fullgraph=True)
    _steps(compiled, cparams, step)
    _steps(eager, eparams, eager.step)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["AdamW"], 0, 0)


def test_in_graph_work_before_and_after_the_step():
    """The op's tensors are inputs of the graph that it mutates: clipping the
    grads before it and reading the params after it in the same graph see
    the right values."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        runs.append((model, fusedopt.AdamW(model.parameters(), lr=torch.tensor(0.01))))
    (model, opt), (eager_model, eager_opt) = runs

    def clip_step_sum(model, opt):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        return sum(p.sum() for p in model.parameters())

    compiled = torch.compile(clip_step_sum, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 4)
    for _ in range(3):
        for m in (model, eager_model):
            m.zero_grad()
            m(x).square().mean().backward()
        torch.testing.assert_close(compiled(model, opt), clip_step_sum(eager_model, eager_opt), rtol=0, atol=0)
    assert_same_state(eager_opt, list(eager_model.parameters()), opt, list(model.parameters()),
                      STATE_KEYS["AdamW"], 0, 0)


def test_one_op_call_per_group_and_dtype():
    start = make_params(SHAPES, torch.float32) + make_params([(4,), (6,)], torch.float64)
    runs = []
    for _ in range(2):
        params = clone_params(start)
        groups = [{"params": params[:2] + params[4:5]}, {"params": params[2:4] + params[5:]}]
        runs.append((fusedopt.Adam(groups, lr=0.01), params))
    (compiled, cparams), (eager, eparams) = runs
    recorder = GraphRecorder()
    _steps(compiled, cparams, torch.compile(compiled.step, backend=recorder, fullgraph=True))
    _steps(eager, eparams, eager.step)
    assert recorder.frame_count == 1
    sizes = sorted(len(node.args[0]) for node in recorder.op_calls[0])
    assert sizes == [1, 1, 2, 2]
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)


def test_tensor_lr_changes_without_recompiling():
    (compiled, cparams), (eager, eparams), _ = _three("Adam", dict(lr=torch.tensor(0.01)))
    recorder = GraphRecorder()
    step = torch.compile(compiled.step, backend=recorder, fullgraph=True)
    for i in range(STEPS):
        for opt in (compiled, eager):
            opt.param_groups[0]["lr"].fill_(0.01 / (i + 1))
        _steps(compiled, cparams, step, 1, i)
        _steps(eager, eparams, eager.step, 1, i)
    assert recorder.frame_count == 1
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)


def test_float_lr_schedule_recompiles_then_steps_eagerly():
    """A float lr is a constant of the graph: each new value compiles again,
    and past dynamo's recompile limit the step runs eagerly, still right."""
    (compiled, cparams), (eager, eparams), _ = _three("Adam", dict(lr=0.01))
    recorder = GraphRecorder()
    step = torch.compile(compiled.step, backend=recorder)
    steps = torch._dynamo.config.recompile_limit + 3
    for i in range(steps):
        for opt in (compiled, eager):
            opt.param_groups[0]["lr"] = 0.01 / (i + 1)
        _steps(compiled, cparams, step, 1, i)
        _steps(eager, eparams, eager.step, 1, i)
    assert recorder.frame_count == torch._dynamo.config.recompile_limit
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)


def test_amp_scale_and_skipped_step():
    """GradScaler's grad_scale and found_inf (set on the optimizer for the
    step) reach the op in the graph: grads unscaled, an inf step skipped."""
    (compiled, cparams), (eager, eparams), _ = _three("Adam", dict(lr=0.01))
    step = torch.compile(compiled.step, backend="aot_eager", fullgraph=True)
    for i, found_inf in enumerate([0.0, 1.0, 0.0]):
        for opt, params, fn in ((compiled, cparams, step), (eager, eparams, eager.step)):
            for p, g in zip(params, gradients(params, i)):
                p.grad = g * 64
            opt.grad_scale, opt.found_inf = torch.tensor(64.0), torch.tensor(found_inf)
            fn()
            del opt.grad_scale, opt.found_inf
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)
    assert float(compiled.state[cparams[0]]["step"]) == 2


def test_params_without_grads_and_later_with():
    (compiled, cparams), (eager, eparams), (theirs, tparams) = _three("RMSprop", dict(lr=0.01, momentum=0.9))
    step = torch.compile(compiled.step, backend="eager", fullgraph=True)
    for i in range(STEPS):
        for opt, params, fn in ((compiled, cparams, step), (eager, eparams, eager.step),
                                (theirs, tparams, theirs.step)):
            for j, (p, g) in enumerate(zip(params, gradients(params, i))):
                p.grad = g if i >= 2 or j % 2 else None
            fn()
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["RMSprop"], 0, 0)
    assert_same_state(compiled, cparams, theirs, tparams, STATE_KEYS["RMSprop"], *FP32)


@pytest.mark.parametrize("options, buckets", [
    (dict(param_precision="master"), 1), (dict(param_precision="stochastic", seed=3), 1),
    # 8-bit states for the params of 16 elements or more: a bucket of their own
    (dict(state_dtype="8bit", quantize_threshold=16), 2)], ids=["master", "stochastic", "8bit"])
def test_low_precision_options(options, buckets):
    (compiled, cparams), (eager, eparams) = fusedopt_twins("SGD", dict(lr=0.05, momentum=0.9, **options),
                                                           make_params(SHAPES, torch.bfloat16))
    recorder = GraphRecorder()
    _steps(compiled, cparams, torch.compile(compiled.step, backend=recorder, fullgraph=True))
    _steps(eager, eparams, eager.step)
    assert [len(calls) for calls in recorder.op_calls] == [buckets] * recorder.frame_count
    keys = ("momentum_buffer", "master_param", "step")
    assert_same_state(compiled, cparams, eager, eparams, keys, 0, 0)


def test_complex_params():
    (compiled, cparams), (eager, eparams), (theirs, tparams) = _three("Adam", dict(lr=0.01), dtype=torch.complex64)
    step = torch.compile(compiled.step, backend="eager", fullgraph=True)
    _steps(compiled, cparams, step)
    _steps(eager, eparams, eager.step)
    _steps(theirs, tparams, theirs.step)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)
    assert_same_state(compiled, cparams, theirs, tparams, STATE_KEYS["Adam"], *FP32)


@pytest.mark.parametrize("what", ["reference-backend", "tensor-betas"])
def test_groups_the_graph_cannot_hold_step_eagerly(what):
    """A graph break where the op cannot run in the graph: refused with a
    reason under fullgraph, right results without."""
    opts = dict(lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.95))) if what == "tensor-betas" else dict(lr=0.01)
    extra = dict(backend="reference") if what == "reference-backend" else {}
    (compiled, cparams), (eager, eparams), _ = _three("Adam", opts, **extra)
    for p, g in zip(cparams, gradients(cparams, 0)):
        p.grad = g
    with pytest.raises(torch._dynamo.exc.Unsupported, match="fusedopt steps eagerly"):
        torch.compile(compiled.step, backend="eager", fullgraph=True)()
    _steps(compiled, cparams, torch.compile(compiled.step, backend="eager"))
    _steps(eager, eparams, eager.step)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)


BIG_SHAPES = [(7,), (33,), (5, 3), (1,), (0,), (9,), (2, 2), (6,)]


def _in_calls_of_three(monkeypatch, name, opts, dtype):
    """A compiled and an eager optimizer on equal BIG_SHAPES params, stepped,
    with compiled op calls of at most 3 params; and the graphs' recorder."""
    monkeypatch.setattr(fusedopt.optimizer, "_TRACED_CALL_PARAMS", 3)
    runs = fusedopt_twins(name, opts, make_params(BIG_SHAPES, dtype))
    (compiled, cparams), (eager, eparams) = runs
    recorder = GraphRecorder()
    _steps(compiled, cparams, torch.compile(compiled.step, backend=recorder, fullgraph=True))
    _steps(eager, eparams, eager.step)
    return runs[0], runs[1], recorder


@pytest.mark.parametrize("name, opts, dtype, keys", [
    ("Adam", dict(lr=0.01, amsgrad=True), torch.float32, STATE_KEYS["Adam"]),
    ("SGD", dict(lr=0.05, momentum=0.9), torch.float32, STATE_KEYS["SGD"]),
    ("SGD", dict(lr=0.05, momentum=0.9, param_precision="stochastic", seed=5), torch.bfloat16,
     ("momentum_buffer", "step")),
    ("AdamW", dict(lr=0.01, param_precision="compensated"), torch.bfloat16, STATE_KEYS["AdamW"] + ("param_residual",)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9), torch.complex64, STATE_KEYS["RMSprop"]),
], ids=["adam-amsgrad", "sgd-first-step", "sgd-stochastic", "adamw-compensated", "rmsprop-complex"])
def test_a_big_bucket_steps_in_calls_of_bounded_size(monkeypatch, name, opts, dtype, keys):
    """A bucket of more params than one compiled op call takes is cut into
    calls (fusedopt.optimizer._TRACED_CALL_PARAMS, 3 here), each tensor with
    its own lists, step count and random bits: the eager step's results, bit
    for bit."""
    (compiled, cparams), (eager, eparams), recorder = _in_calls_of_three(monkeypatch, name, opts, dtype)
    for calls in recorder.op_calls:
        assert [len(node.args[0]) for node in calls] == [3, 3, 2]
    assert_same_state(compiled, cparams, eager, eparams, keys, 0, 0)


def test_a_big_bucket_the_op_refuses_changes_nothing(monkeypatch):
    """The whole bucket is checked before the first of its calls: a bad state
    in the last call's part fails the step with the index in the bucket, and
    no param or state has changed."""
    monkeypatch.setattr(fusedopt.optimizer, "_TRACED_CALL_PARAMS", 3)
    params = make_params(BIG_SHAPES, torch.float32)
    opt = fusedopt.Adam(params, lr=0.01)
    _steps(opt, params, opt.step, steps=1)
    opt.state[params[7]]["exp_avg"] = torch.zeros(5)
    for p, g in zip(params, gradients(params, 1)):
        p.grad = g
    before = [p.clone() for p in params], [opt.state[p]["step"].clone() for p in params]
    with pytest.raises(Exception, match=r"exp_avgs\[7\] has shape \[5\]"):
        torch.compile(opt.step, backend="eager", fullgraph=True)()
    for p, old in zip(params, before[0]):
        assert torch.equal(p, old)
    for p, old in zip(params, before[1]):
        assert torch.equal(opt.state[p]["step"], old)


def _flat_buffers(opt, params, key):
    """The distinct buffers that params' `key` states are views of, after
    checking that each is a view that tiles its buffer in the params' order."""
    buffers = []
    for p in params:
        t = opt.state[p][key]
        base = t._base
        assert base is not None and base.dim() == 1, f"{key} of a param of shape {tuple(p.shape)} is no view"
        if not buffers or buffers[-1] is not base:
            buffers.append(base)
            offset = base.storage_offset()
        assert t.storage_offset() == offset and t.is_contiguous()
        offset += t.numel()
    return buffers


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_states_live_in_one_buffer_per_call_and_list(monkeypatch, case):
    """Without AMP a compiled step keeps each state list and the step counts
    of one op call in one buffer (the state tensors are views of it) and calls
    the op's `.flat` overload: the eager step's results bit for bit, and a
    state_dict that torch.optim loads."""
    name, opts = CASES[case]
    (compiled, cparams), (eager, eparams), recorder = _in_calls_of_three(monkeypatch, name, opts, torch.float32)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS[name], 0, 0)
    assert [str(node.target) for node in recorder.op_calls[-1]] == [f"fusedopt.{compiled._op}.flat"] * 3
    for key in STATE_KEYS[name]:
        if key in compiled.state[cparams[0]]:
            assert len(_flat_buffers(compiled, cparams, key)) == 3, key
    theirs = getattr(torch.optim, name)(clone_params(cparams), **opts)
    theirs.load_state_dict(compiled.state_dict())
    assert_same_state(theirs, theirs.param_groups[0]["params"], compiled, cparams, STATE_KEYS[name], 0, 0)


def test_states_replaced_after_compiling_are_the_ones_stepped():
    """The graph updates the flat buffers; a state tensor replaced behind it
    (assigned, or by load_state_dict) fails dynamo's guards, so the next step
    compiles again and lays the new values out flat."""
    (compiled, cparams), (eager, eparams), _ = _three("Adam", dict(lr=0.01, amsgrad=True))
    recorder = GraphRecorder()
    step = torch.compile(compiled.step, backend=recorder, fullgraph=True)
    _steps(compiled, cparams, step, 2)
    _steps(eager, eparams, eager.step, 2)
    for opt, params in ((compiled, cparams), (eager, eparams)):
        opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"] * 3 + 1
        opt.state[params[2]]["step"] = torch.tensor(7.0)
    _steps(compiled, cparams, step, 1, 2)
    _steps(eager, eparams, eager.step, 1, 2)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)
    saved = eager.state_dict()
    for opt in (compiled, eager):
        opt.load_state_dict(saved)
    _steps(compiled, cparams, step, 2, 3)
    _steps(eager, eparams, eager.step, 2, 3)
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)
    assert recorder.frame_count == 3
    assert len(_flat_buffers(compiled, cparams, "exp_avg")) == 1


@pytest.mark.parametrize("what", ["amp", "non-contiguous-param", "state-dtype"])
def test_steps_the_flat_layout_does_not_take_get_lists(what):
    """AMP (grads unscaled in place), a non-contiguous param and a state of
    another dtype than the op takes keep the list op: the first two step as
    the eager step does, the last fails as it does."""
    start = make_params([(3, 4), (5,)], torch.float32)
    if what == "non-contiguous-param":
        start[0] = torch.nn.Parameter(start[0].detach().t().contiguous().t())
    (compiled, cparams), (eager, eparams) = fusedopt_twins("Adam", dict(lr=0.01), start)
    if what == "non-contiguous-param":
        assert not cparams[0].is_contiguous()
    recorder = GraphRecorder()
    step = torch.compile(compiled.step, backend=recorder, fullgraph=True)
    if what == "state-dtype":
        _steps(compiled, cparams, compiled.step, 1)
        compiled.state[cparams[1]]["exp_avg_sq"] = compiled.state[cparams[1]]["exp_avg_sq"].double()
        # aot_eager: with the "eager" backend an error raised in the graph leaves grad mode off (torch 2.13).
        step = torch.compile(compiled.step, backend="aot_eager", fullgraph=True)
        with pytest.raises(Exception, match=r"exp_avg_sqs\[1\] is Double but its param is Float"):
            _steps(compiled, cparams, step, 1)
        return
    for i in range(3):
        for opt, params, fn in ((compiled, cparams, step), (eager, eparams, eager.step)):
            if what == "amp":
                opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(0.0)
            for p, g in zip(params, gradients(params, i)):
                p.grad = g * (8 if what == "amp" else 1)
            fn()
    assert [str(node.target) for node in recorder.op_calls[-1]] == ["fusedopt.adam_"]
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["Adam"], 0, 0)


def test_states_laid_out_flat_leave_no_copy_behind():
    """The states an eager step made are copied into the flat buffers once;
    the separate tensors are freed then (the eager plan that held them is
    dropped), so compiling does not keep two copies of the optimizer's state."""
    import weakref

    params = make_params(BIG_SHAPES, torch.float32)
    opt = fusedopt.Adam(params, lr=0.01)
    _steps(opt, params, opt.step, 2)  # the second step runs through the plan
    before = [weakref.ref(opt.state[p][key]) for p in params for key in ("exp_avg", "exp_avg_sq", "step")]
    _steps(opt, params, torch.compile(opt.step, backend="aot_eager", fullgraph=True), 1, 2)
    assert all(ref() is None for ref in before)
    assert len(_flat_buffers(opt, params, "exp_avg_sq")) == 1


def test_a_state_that_shares_its_params_memory_is_refused():
    params = make_params([(3,), (4,)], torch.float32)
    opt = fusedopt.Adam(params, lr=0.01)
    _steps(opt, params, opt.step, 1)
    opt.state[params[1]]["exp_avg"] = params[1].detach()
    with pytest.raises(Exception, match=r"exp_avgs\[1\] and params\[1\]|params\[1\] and exp_avgs\[1\]"):
        _steps(opt, params, torch.compile(opt.step, backend="aot_eager", fullgraph=True), 1, 1)


def test_eager_and_compiled_steps_alternate_on_the_same_flat_states():
    """Eager steps update the flat states in place (their cached plan holds
    the views) and compiled steps after them neither copy nor recompile."""
    (compiled, cparams), (eager, eparams), _ = _three("AdamW", dict(lr=0.01, amsgrad=True))
    recorder = GraphRecorder()
    step = torch.compile(compiled.step, backend=recorder, fullgraph=True)
    for i, fn in enumerate([step, compiled.step, compiled.step, step, compiled.step, step]):
        _steps(compiled, cparams, fn, 1, i)
        _steps(eager, eparams, eager.step, 1, i)
    assert recorder.frame_count == 1
    assert len(_flat_buffers(compiled, cparams, "exp_avg")) == 1
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS["AdamW"], 0, 0)
