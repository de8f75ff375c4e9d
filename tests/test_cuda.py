"""The CUDA kernels against torch.optim on a GPU: every algorithm x option in
float32 and float64, low precision against torch's fused Adam, lists long
enough to need several launches and chunks, strided params. Skipped where
there is no GPU or fusedopt was built without CUDA (FUSEDOPT_CUDA=1 builds it)."""
import pytest
import torch

import fusedopt
from helpers import (STATE_KEYS, assert_same_state, clone_params, fusedopt_twins, gradients, make_optimizer,
                     make_params, option_cases, run_steps, tolerances)

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


CAPTURABLE = [("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("AdamW", dict(lr=0.01)),
              ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.1))]


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("name,opts", CAPTURABLE, ids=[c[0] for c in CAPTURABLE])
def test_capturable_matches_torch(name, opts, tensor_lr):
    """Step counts on the device (and lr read there) give torch's results."""
    opts = dict(opts, capturable=True)
    if tensor_lr:
        opts["lr"] = torch.tensor(opts["lr"], device="cuda")
    base = make_params(SHAPES, torch.float32, device="cuda")
    ours, ours_params, theirs, torch_params = _pair(name, opts, base, {"foreach": False})
    assert all(ours.state[p]["step"].device.type == "cuda" for p in ours_params if p.numel())
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(torch.float32))


@pytest.mark.parametrize("name,opts", CAPTURABLE, ids=[c[0] for c in CAPTURABLE])
def test_cuda_graph_replay_matches_eager(name, opts):
    """A step captured in a CUDA graph and replayed with new gradients (and a
    new tensor lr) gives the eager results."""
    base = make_params([(7,), (33,), (4099,), (70_001,)], torch.float32, device="cuda")
    lr = torch.tensor(opts["lr"], device="cuda")
    graphed, eager = clone_params(base), clone_params(base)
    opt_g = make_optimizer(fusedopt, name, graphed, dict(opts, lr=lr.clone(), capturable=True))
    opt_e = make_optimizer(fusedopt, name, eager, dict(opts, lr=lr.clone(), capturable=True))
    static_grads = [torch.zeros_like(p) for p in graphed]
    for p, g in zip(graphed, static_grads):
        p.grad = g
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for step in range(3):  # warm-up: state created and a plan cached before capture
            for g, new in zip(static_grads, gradients(graphed, step)):
                g.copy_(new)
            opt_g.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt_g.step()
    run_steps(opt_e, eager, 3)
    for step in range(3, 8):
        new_lr = opts["lr"] * (0.9 ** step)
        opt_g.param_groups[0]["lr"].fill_(new_lr)
        opt_e.param_groups[0]["lr"].fill_(new_lr)
        for g, new in zip(static_grads, gradients(graphed, step)):
            g.copy_(new)
        graph.replay()
        run_steps(opt_e, eager, 1, start=step)
    torch.cuda.synchronize()
    assert_same_state(opt_g, graphed, opt_e, eager, STATE_KEYS[name], 1e-6, 1e-7)
    assert float(opt_g.state[graphed[0]]["step"]) == 8


def test_capture_without_capturable_is_refused():
    params = clone_params(make_params([(16,)], torch.float32, device="cuda"))
    opt = fusedopt.Adam(params, lr=0.01)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    with pytest.raises(RuntimeError, match="capturable is False"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            opt.step()


@pytest.mark.parametrize("name,opts", [("Adam", dict(lr=0.01)), ("SGD", dict(lr=0.1, momentum=0.9))])
def test_unaligned_tensors_take_the_general_path(name, opts):
    """Views that start off a 16-byte boundary match torch (the vectorized path
    needs every stream aligned)."""
    storage = torch.randn(4100, device="cuda", dtype=torch.float32)
    base = [storage[1:4100], storage[3:36]]
    ours, ours_params, theirs, torch_params = _pair(name, opts, base, {"foreach": False})
    assert_same_state(ours, ours_params, theirs, torch_params, STATE_KEYS[name], *tolerances(torch.float32))


@pytest.mark.parametrize("name", ["DefaultSGDOptimizer", "SGDMomentumOptimizer", "SGDNesterovOptimizer",
                                  "AdaGradOptimizer", "DefaultRMSPropOptimizer", "RMSPropMomentumOptimizer",
                                  "AdamOptimizer"])
def test_classic_on_cuda_matches_cpu(name):
    """fusedopt.classic's update on CUDA weights equals the same update on the CPU."""
    from fusedopt import classic
    factory = getattr(classic, name)
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3000, generator=g, dtype=torch.float64)
    dws = [torch.randn(3000, generator=g, dtype=torch.float64) for _ in range(4)]
    dr = torch.randn(3000, generator=g, dtype=torch.float64)
    w_cpu, w_cuda = w.clone(), w.cuda()
    opt_cpu, opt_cuda = factory(), factory()
    for dw in dws:
        w_cpu = opt_cpu.update(w_cpu, 0.01, dw, dr, 0.1)
        w_cuda = opt_cuda.update(w_cuda, 0.01, dw.cuda(), dr.cuda(), 0.1)
    assert w_cuda.device.type == "cuda"
    torch.testing.assert_close(w_cuda.cpu(), w_cpu, rtol=1e-12, atol=1e-14)


def test_traffic_op_on_cuda():
    p, g, s1 = (torch.randn(1000, device="cuda") for _ in range(3))
    p0, s10 = p.clone(), s1.clone()
    torch.ops.fusedopt.traffic_([p], [g], [s1], [], [])
    torch.testing.assert_close(p, p0 + g)
    torch.testing.assert_close(s1, s10 + g)


def test_host_work_of_a_cuda_step_stays_on_the_calling_thread():
    """Checking 2000 CUDA tensors and counting their CPU step counts is host
    work, but it never wakes fusedopt's CPU helper threads: on a GPU host the
    cores belong to the data loader and compile workers."""
    prior = torch.get_num_threads()
    torch.set_num_threads(max(2, prior))
    try:
        params = [torch.nn.Parameter(torch.randn(1024, device="cuda")) for _ in range(2000)]
        for p in params:
            p.grad = torch.randn_like(p)
        for capturable in (False, True):
            opt = fusedopt.Adam(params, lr=1e-3, capturable=capturable)
            opt.step()
            before = torch.ops.fusedopt.cpu_helped_runs()
            opt.step()
            torch.cuda.synchronize()
            assert torch.ops.fusedopt.cpu_helped_runs() == before
    finally:
        torch.set_num_threads(prior)


@pytest.mark.parametrize("capturable", [False, True], ids=["host-steps", "capturable"])
@pytest.mark.parametrize("name,opts", [("Adam", dict(lr=0.01, amsgrad=True)), ("SGD", dict(lr=0.05, momentum=0.9)),
                                       ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9))],
                         ids=["adam", "sgd", "rmsprop"])
def test_compiled_step_matches_eager_on_cuda(name, opts, capturable):
    """torch.compile on the GPU: the flat states (CPU or, capturable, device
    step counts) give the eager step's results bit for bit."""
    if capturable and name == "SGD":
        pytest.skip("SGD keeps no step counts")
    if capturable:
        opts = dict(opts, capturable=True)
    (compiled, cparams), (eager, eparams) = fusedopt_twins(name, opts, make_params(SHAPES, torch.float32,
                                                                                   device="cuda"))
    step = torch.compile(compiled.step, fullgraph=True)
    for i in range(4):
        run_steps(compiled, cparams, 1, start=i, step_fn=step)
        run_steps(eager, eparams, 1, start=i)
    assert compiled.state[cparams[-1]][STATE_KEYS[name][0]]._base is not None  # laid out flat
    assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS[name], 0, 0)
