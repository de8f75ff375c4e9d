"""Checkpoint and resume: a run of N steps against the same run stopped after
K steps, checkpointed (params, optimizer state dict and, in one test, an lr
scheduler's state dict) through torch.save to a BytesIO and
torch.load(weights_only=True), and continued for N - K steps by a FRESH
optimizer (and scheduler) over fresh params holding the saved values.

- fusedopt -> fusedopt: bitwise equal to fusedopt's uninterrupted run (params,
  every state tensor, step counts, param group hyperparameters).
- fusedopt -> torch.optim and torch.optim -> fusedopt (torch's for-loop,
  foreach=False): equal to torch's and to fusedopt's uninterrupted runs to
  tests/helpers.py's tolerances, step counts exactly.

Two gradient patterns: every param has a gradient on every step (fusedopt's
cached C++ plan exists when the checkpoint is taken: asserted), and "gaps"
(one param gets its first gradient only after the resume, so its state is
born in the resumed optimizer, and others miss a step, one of them the first
step after the resume; no plan exists at the checkpoint). The checkpoint is
taken from the uninterrupted run itself, which then goes on: saving must not
disturb it either.
"""
import io

import pytest
import torch

import fusedopt
from helpers import STATE_KEYS, assert_same_state, clone_params, gradients, make_params, tolerances

N, K = 7, 3  # steps in all; steps before the checkpoint

OPTIONS = {
    "SGD": [dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
            dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True)],
    "Adagrad": [dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
                dict(lr=0.05, weight_decay=0.1, eps=1e-3, maximize=True)],
    "RMSprop": [dict(lr=0.01, centered=True, momentum=0.9),
                dict(lr=0.01, alpha=0.9, weight_decay=0.1, maximize=True)],
    "Adam": [dict(lr=0.01, amsgrad=True, weight_decay=0.1),
             dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)],
    "AdamW": [dict(lr=0.01, amsgrad=True),
              dict(lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, maximize=True)],
}
CASES = [(name, opts) for name, option_sets in OPTIONS.items() for opts in option_sets]
IDS = [f"{name}-{i}" for name, option_sets in OPTIONS.items() for i in range(len(option_sets))]

# (param index, step) pairs without a gradient in the "gaps" pattern: param 1
# until the checkpoint, param 3 on the first step after it, param 0 once.
GAPS = {(1, step) for step in range(K)} | {(3, K), (0, 1)}
PATTERNS = ("every_step", "gaps")


def _base(dtype):
    params = make_params([(7,), (31, 17), (0,), (1,), (129,)], dtype)
    params.append(make_params([(9, 5)], dtype, seed=5)[0].t())  # dense, not contiguous
    return params


def _make(library, name, params, opts):
    extra = {"foreach": False} if library is torch.optim else {}
    return getattr(library, name)(params, **opts, **extra)


def _scheduler(opt):
    """OneCycleLR, which also cycles momentum / beta1 where the optimizer has one."""
    cycle_momentum = "betas" in opt.defaults or opt.defaults.get("momentum", 0) > 0
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2 * opt.defaults["lr"], total_steps=N + 1,
                                               cycle_momentum=cycle_momentum)


class Run:
    def __init__(self, library, name, opts, params, schedule):
        self.library, self.params = library, params
        self.opt = _make(library, name, params, opts)
        self.scheduler = _scheduler(self.opt) if schedule else None

    def steps(self, start, stop, pattern):
        for step in range(start, stop):
            for i, (p, g) in enumerate(zip(self.params, gradients(self.params, step))):
                p.grad = None if pattern == "gaps" and (i, step) in GAPS else g
            self.opt.step()
            if self.scheduler is not None:
                self.scheduler.step()

    def checkpoint(self):
        buffer = io.BytesIO()
        torch.save({"params": [p.detach() for p in self.params], "optimizer": self.opt.state_dict(),
                    "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)


def _run(library, name, opts, pattern, dtype=torch.float32, schedule=False):
    """N uninterrupted steps, with a checkpoint taken after K of them."""
    run = Run(library, name, opts, clone_params(_base(dtype)), schedule)
    run.steps(0, K, pattern)
    if library is fusedopt:
        # The plan exists at the checkpoint exactly when every param had a
        # gradient on the last step.
        assert bool(run.opt._plans) == (pattern == "every_step")
    saved = run.checkpoint()
    run.steps(K, N, pattern)
    return run, saved


def _resume(library, name, opts, saved, pattern, schedule=False, load_optimizer=True):
    """A fresh optimizer (and scheduler) over fresh params holding the saved
    values, loaded from the checkpoint and run for the remaining steps."""
    run = Run(library, name, opts, clone_params(saved["params"]), schedule)
    if load_optimizer:
        run.opt.load_state_dict(saved["optimizer"])
    if schedule:
        run.scheduler.load_state_dict(saved["scheduler"])
    run.steps(K, N, pattern)
    return run


def _bits(t):
    t = t.detach()
    if t.is_floating_point():
        t = t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
    return t


def _assert_bitwise(a, b):
    for i, (pa, pb) in enumerate(zip(a.params, b.params)):
        assert pa.dtype == pb.dtype and torch.equal(_bits(pa), _bits(pb)), f"param {i} differs"
        sa, sb = a.opt.state.get(pa, {}), b.opt.state.get(pb, {})
        assert set(sa) == set(sb), f"param {i}: state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, f"param {i} {key}: dtype {sa[key].dtype} != {sb[key].dtype}"
            assert torch.equal(_bits(sa[key]), _bits(sb[key])), f"param {i} {key} differs"
    assert a.opt.state_dict()["param_groups"] == b.opt.state_dict()["param_groups"]
    if a.scheduler is not None:
        assert a.scheduler.state_dict() == b.scheduler.state_dict()


def _assert_close(a, b, name):
    assert_same_state(a.opt, a.params, b.opt, b.params, STATE_KEYS[name], *tolerances(torch.float32))
    for key in ("lr", "betas", "momentum"):
        ga, gb = a.opt.param_groups[0], b.opt.param_groups[0]
        if key in ga:
            assert ga[key] == gb[key], f"param group {key}: {ga[key]} != {gb[key]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_fusedopt_resume_is_bitwise_equal(name, opts, pattern, dtype):
    straight, saved = _run(fusedopt, name, opts, pattern, dtype)
    _assert_bitwise(_resume(fusedopt, name, opts, saved, pattern), straight)


@pytest.mark.parametrize("direction", ["fusedopt_to_torch", "torch_to_fusedopt"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_resume_across_libraries(name, opts, pattern, direction):
    first, second = (fusedopt, torch.optim) if direction == "fusedopt_to_torch" else (torch.optim, fusedopt)
    straight_first, saved = _run(first, name, opts, pattern)
    straight_second, _ = _run(second, name, opts, pattern)
    resumed = _resume(second, name, opts, saved, pattern)
    _assert_close(resumed, straight_second, name)
    _assert_close(resumed, straight_first, name)


@pytest.mark.parametrize("direction", ["fusedopt_to_fusedopt", "fusedopt_to_torch", "torch_to_fusedopt"])
@pytest.mark.parametrize("name,opts", [(name, option_sets[0]) for name, option_sets in OPTIONS.items()],
                         ids=list(OPTIONS))
def test_resume_with_lr_scheduler(name, opts, direction):
    """OneCycleLR changes lr (and momentum or beta1) every step; its state
    dict is checkpointed with the optimizer's. The plan exists at the
    checkpoint (every param has a gradient on every step)."""
    first, second = {"fusedopt_to_fusedopt": (fusedopt, fusedopt), "fusedopt_to_torch": (fusedopt, torch.optim),
                     "torch_to_fusedopt": (torch.optim, fusedopt)}[direction]
    straight_first, saved = _run(first, name, opts, "every_step", schedule=True)
    resumed = _resume(second, name, opts, saved, "every_step", schedule=True)
    if first is second:
        _assert_bitwise(resumed, straight_first)
        return
    straight_second, _ = _run(second, name, opts, "every_step", schedule=True)
    _assert_close(resumed, straight_second, name)
    _assert_close(resumed, straight_first, name)
    assert resumed.scheduler.state_dict() == straight_second.scheduler.state_dict()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_checks_catch_a_lost_state(name):
    """Neither check is vacuous: resuming without the optimizer's state (the
    fresh optimizer's own zero state instead) fails both."""
    opts = OPTIONS[name][0]
    straight, saved = _run(fusedopt, name, opts, "every_step")
    lost = _resume(fusedopt, name, opts, saved, "every_step", load_optimizer=False)
    with pytest.raises(AssertionError):
        _assert_bitwise(lost, straight)
    with pytest.raises(AssertionError):
        _assert_close(lost, _run(torch.optim, name, opts, "every_step")[0], name)
