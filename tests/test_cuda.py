"""The CUDA kernels against torch.optim on a GPU: every algorithm x option in
float32 and float64, low precision against torch's fused Adam, lists long
enough to need several launches and chunks, strided params. Skipped where
there is no GPU or fusedopt was built without CUDA (FUSEDOPT_CUDA=1 builds it)."""
import pytest
import torch

import fusedopt
from helpers import (STATE_KEYS, assert_same_state, clone_params, make_optimizer, make_params, option_cases,
                     run_steps, tolerances)

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fusedopt.info()["cuda"]),
                                reason="needs a GPU and fusedopt's CUDA kernels")

CASES, IDS = option_cases()
SHAPES = [(0,), (1,), (7,), (33,), (31, 17), (4099,), (70_001,)]


def _pair(name, opts, base, torch_extra):
    ours_params, torch_params = clone_params(base), clone_params(base)
    ours = make_optimizer(fusedopt, name, ours_params, opts)
    theirs = make_optimizer(torch.optim, name, torch_params, opts, **torch_extra)
    run_steps(ours, ours_params, 10)
    run_steps(theirs, torch_params, 10)
    return ours, ours_params, theirs, torch_params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_matches_torch_on_cuda(name, opts, dtype):
    base = make_params(SHAPES, dtype, device="cuda")
    ours, ours_params, theirs, torch_params = _pair(name, opts, base, {"foreach": False})
    assert all(p.device.type == "cuda" for p in ours_params)
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_low_precision_matches_torch_fused(name, dtype):
    base = make_params(SHAPES, dtype, device="cuda")
    ours, ours_params, theirs, torch_params = _pair(name, dict(lr=0.01, amsgrad=True), base, {"fused": True})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(dtype))


def test_many_tensors_and_chunks():
    """More tensors than one launch carries, and a tensor of several chunks
    that spans two launches."""
    shapes = [(1000 + i,) for i in range(300)] + [(65536 * 330 + 5,)]
    base = make_params(shapes, torch.float32, device="cuda")
    ours, ours_params, theirs, torch_params = _pair("Adam", dict(lr=0.01), base, {"foreach": False})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS["Adam"], *tolerances(torch.float32))


def test_strided_params_on_cuda():
    base = torch.randn(24, 40, device="cuda", dtype=torch.float64)
    ours = [torch.nn.Parameter(base.t().contiguous().t().clone(memory_format=torch.preserve_format))]
    theirs = [torch.nn.Parameter(base.t().contiguous().t().clone(memory_format=torch.preserve_format))]
    a = fusedopt.SGD(ours, lr=0.1, momentum=0.9)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, foreach=False)
    run_steps(a, ours, 4)
    run_steps(b, theirs, 4)
    assert_same_state(a, ours, b, theirs, STATE_KEYS["SGD"], *tolerances(torch.float64))
