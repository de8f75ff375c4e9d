"""fusedopt against torch.optim: every algorithm x option x dtype, 10 steps,
every param and every state key."""
import pytest
import torch

import fusedopt
from helpers import (SHAPES, STATE_KEYS, assert_same_state, clone_params, make_optimizer, make_params,
                     option_cases, run_steps, tolerances)

CASES, IDS = option_cases()
STEPS = 10

# torch.optim classes whose fused CPU kernel computes bfloat16/float16 in
# float32 with one rounding per stored value, as fusedopt does. (torch 2.13's
# fused CPU SGD is far off its own for-loop for bfloat16/float16, and fused
# Adagrad differs from it by more than fusedopt does, so those two are only
# compared with the for-loop.)
TORCH_FUSED_SAME_MATH = {"Adam", "AdamW"}

# How far the for-loop, which rounds to bfloat16/float16 after every
# operation, may drift from one rounding per step over 10 steps: a few ulps of
# the largest value of each tensor, also where a value nears zero.
LOOSE = {torch.bfloat16: (3e-2, 3e-2), torch.float16: (4e-3, 4e-3)}


def _run_pair(name, opts, dtype, torch_extra, ours_extra=None):
    base = make_params(SHAPES, dtype)
    ours_params, torch_params = clone_params(base), clone_params(base)
    ours = make_optimizer(fusedopt, name, ours_params, opts, **(ours_extra or {}))
    theirs = make_optimizer(torch.optim, name, torch_params, opts, **torch_extra)
    run_steps(ours, ours_params, STEPS)
    run_steps(theirs, torch_params, STEPS)
    return ours, ours_params, theirs, torch_params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_matches_torch_for_loop(name, opts, dtype):
    ours, ours_params, theirs, torch_params = _run_pair(name, opts, dtype, {"foreach": False})
    rtol, atol = tolerances(dtype)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], rtol, atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_low_precision_near_torch_for_loop(name, opts, dtype):
    if dtype == torch.float16 and name != "SGD":
        # In float16 torch's for-loop rounds eps = 1e-8 or 1e-10 to 0 and then
        # divides by zero; compare with an eps float16 can hold.
        opts = {**opts, "eps": 1e-3}
    ours, ours_params, theirs, torch_params = _run_pair(name, opts, dtype, {"foreach": False})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *LOOSE[dtype])


LOW_PRECISION_FUSED = [(n, o) for n, o in CASES if n in TORCH_FUSED_SAME_MATH]
LOW_PRECISION_FUSED_IDS = [i for (n, _), i in zip(CASES, IDS) if n in TORCH_FUSED_SAME_MATH]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name,opts", LOW_PRECISION_FUSED, ids=LOW_PRECISION_FUSED_IDS)
def test_low_precision_matches_torch_fused(name, opts, dtype):
    ours, ours_params, theirs, torch_params = _run_pair(name, opts, dtype, {"fused": True})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(dtype))


def test_comparison_catches_a_wrong_update():
    """The parity check is not vacuous: torch with a 1% larger lr fails it."""
    opts = dict(lr=0.01, betas=(0.8, 0.95))
    ours, ours_params, theirs, torch_params = _run_pair("Adam", opts, torch.float32, {"foreach": False})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *tolerances(torch.float32))
    wrong_params = clone_params(make_params(SHAPES, torch.float32))
    wrong = torch.optim.Adam(wrong_params, lr=0.0101, betas=(0.8, 0.95), foreach=False)
    run_steps(wrong, wrong_params, STEPS)
    with pytest.raises(AssertionError):
        assert_same_state(ours, ours_params, wrong, wrong_params, STATE_KEYS["Adam"],
                          *tolerances(torch.float32))


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_many_tensors_with_strided_params_match_torch(name, opts):
    # Past the count at which the op reads its lists on several threads; a
    # few params are transposed (walked through contiguous copies), the last
    # one too, so the serial pass after the parallel one is exercised.
    shapes = [(1 + i % 9,) for i in range(400)]
    base = make_params(shapes, torch.float32)
    for i in (0, 200, 399):
        base[i] = make_params([(6, 4)], torch.float32, seed=i)[0].t()
    ours_params, torch_params = clone_params(base), clone_params(base)
    assert not ours_params[399].is_contiguous()
    ours = make_optimizer(fusedopt, name, ours_params, opts)
    theirs = make_optimizer(torch.optim, name, torch_params, opts, foreach=False)
    run_steps(ours, ours_params, 3)
    run_steps(theirs, torch_params, 3)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(torch.float32))
