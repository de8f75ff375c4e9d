"""The native kernels against fusedopt.reference, on every CPU instruction set
this machine supports: every algorithm x option x dtype, tensors of every
awkward size, lists long enough to be cut across threads, non-contiguous
params."""
import pytest
import torch

import fusedopt
from helpers import (SHAPES, STATE_KEYS, FLOAT_DTYPES, assert_same_state, clone_params, make_optimizer,
                     make_params, option_cases, run_steps, tolerances)

CASES, IDS = option_cases()


def _native_and_reference(name, opts, params, steps):
    native_params, ref_params = clone_params(params), clone_params(params)
    native = make_optimizer(fusedopt, name, native_params, opts)
    ref = make_optimizer(fusedopt, name, ref_params, opts, backend="reference")
    run_steps(native, native_params, steps)
    run_steps(ref, ref_params, steps)
    return native, native_params, ref, ref_params


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_native_matches_reference(cpu_isa, name, opts, dtype):
    native, native_params, ref, ref_params = _native_and_reference(
        name, opts, make_params(SHAPES, dtype), steps=10)
    assert_same_state(native, native_params, ref, ref_params, STATE_KEYS[name], *tolerances(dtype))


# One option set per algorithm with most states on. RMSprop without centering
# or weight decay: among a million random elements a few have v close to c^2,
# or g + weight_decay * p close to eps, where RMSprop turns a last-bit
# difference (the baseline ISA has no FMA; torch's AVX2 kernels use it) into
# a large one. The small-shape grid above covers those options.
RICH = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "Adagrad": dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.1),
    "RMSprop": dict(lr=0.01, alpha=0.9, momentum=0.9),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=0.01, amsgrad=True),
}

# Over a million elements in one tensor, and a list whose thread cut points
# fall inside tensors, between them, and next to empty ones.
LARGE_SHAPES = {
    "one_large": [(1_048_583,)],
    "cut_across": [(40_001,), (0,), (1,), (16_385,), (33, 1000), (0,), (99_999,), (5,)],
}


@pytest.mark.parametrize("layout", list(LARGE_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(RICH))
def test_large_and_many_tensors(cpu_isa, name, dtype, layout):
    native, native_params, ref, ref_params = _native_and_reference(
        name, RICH[name], make_params(LARGE_SHAPES[layout], dtype), steps=3)
    assert_same_state(native, native_params, ref, ref_params, STATE_KEYS[name], *tolerances(dtype))


def _strided_params():
    base = torch.randn(24, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return [
        base.t().contiguous().t(),     # dense, column-major: walked as its storage
        base[:, ::2],                  # not dense: goes through a copy and back
        base[3:9, 5:30],               # a window of a larger tensor
        base.unsqueeze(0).transpose(0, 2)[:, :, 0],  # another transposed layout
    ]


@pytest.mark.parametrize("name", list(RICH))
def test_non_contiguous_params_match_torch(name):
    """Strided params (and their grads and states, whatever their layout) get
    the same update as in torch.optim: nothing is lost in a copy."""
    base = _strided_params()
    ours = [torch.nn.Parameter(p.clone(memory_format=torch.preserve_format)) for p in base]
    theirs = [torch.nn.Parameter(p.clone(memory_format=torch.preserve_format)) for p in base]
    # Keep the strided layouts: clone(preserve_format) compacts non-dense views.
    ours[1] = torch.nn.Parameter(torch.empty(24, 40, dtype=torch.float64)[:, ::2].copy_(base[1]))
    theirs[1] = torch.nn.Parameter(torch.empty(24, 40, dtype=torch.float64)[:, ::2].copy_(base[1]))
    assert not ours[1].is_contiguous() and not ours[0].is_contiguous()
    opt_ours = make_optimizer(fusedopt, name, ours, RICH[name])
    opt_theirs = make_optimizer(torch.optim, name, theirs, RICH[name], foreach=False)
    run_steps(opt_ours, ours, 5)
    run_steps(opt_theirs, theirs, 5)
    assert_same_state(opt_ours, ours, opt_theirs, theirs, STATE_KEYS[name], *tolerances(torch.float64))
    # The update happened in the caller's tensors, not in a copy.
    assert not torch.equal(ours[1].detach(), base[1])
