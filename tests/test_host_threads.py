"""The CPU step's host threads (csrc/cpu/slot_pool.h): the work is cut into
slots fixed by the data, which the caller and fusedopt's helper threads (or
torch's OpenMP team, right after torch's own parallel work) claim in whatever
order the scheduler lets them, so the bits must not depend on the thread
count, on who ran which slot, or on where the cuts fall; small steps stay on
the calling thread; a forked child still steps."""
import hashlib
import os
import signal
import time

import pytest
import torch

import fusedopt
from helpers import clone_params, gradients, make_params

pytestmark = pytest.mark.skipif(not fusedopt.info()["native"], reason="needs the native extension")


def helped_runs():
    return torch.ops.fusedopt.cpu_helped_runs()


def _threads(n):
    prior = torch.get_num_threads()
    torch.set_num_threads(n)
    return prior


# Over 256 tensors (the lists are read on several threads), several MB (the
# kernel's work is shared), a tensor of several slots, and a transposed one
# (walked through a copy, after the shared pass).
SHAPES = [(1 + (i * 37) % 3000,) for i in range(600)] + [(3, 70_001), (2049,)]

CONFIGS = {
    "float32 amsgrad": (torch.float32, dict(amsgrad=True)),
    "bfloat16 stochastic": (torch.bfloat16, dict(param_precision="stochastic", state_dtype=torch.bfloat16,
                                                 stochastic_states=True, seed=3)),
    "float32 8-bit states": (torch.float32, dict(state_dtype="8bit")),
}


def _run(config, threads=None, group_per_param=False, steps=3):
    dtype, opts = CONFIGS[config]
    base = make_params(SHAPES, dtype)
    base[-1] = make_params([(2049, 1)], dtype, seed=9)[0].t()
    params = clone_params(base)
    groups = [{"params": [p]} for p in params] if group_per_param else params
    prior = _threads(threads) if threads is not None else None
    try:
        opt = fusedopt.AdamW(groups, lr=1e-2, **opts)
        for step in range(steps):
            for p, g in zip(params, gradients(params, step)):
                p.grad = g
            opt.step()
    finally:
        if prior is not None:
            torch.set_num_threads(prior)
    out = []
    for p in params:
        out.append(p.detach().clone())
        out += [v.clone() for k, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]
    return out


def _bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


def _same_bits(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(_bytes(x), _bytes(y)) for x, y in zip(a, b))


@pytest.fixture(params=["auto", "pool", "openmp"])
def helpers(request, monkeypatch):
    """Who helps the caller: chosen per job (auto), fusedopt's own threads, or
    torch's OpenMP team (read by the extension at every job)."""
    if request.param != "auto":
        monkeypatch.setenv("FUSEDOPT_CPU_HELPERS", request.param)
    return request.param


@pytest.mark.parametrize("config", CONFIGS)
def test_bits_do_not_depend_on_threads_slots_or_cuts(config, helpers):
    one = _run(config, threads=1)
    before = helped_runs()
    runs = {"2 threads": _run(config, threads=2), "2 threads again": _run(config, threads=2)}
    if helped_runs() == before:
        pytest.fail("the 2-thread runs never used the helper threads")
    # One param per group: one op call per tensor, so every cut falls elsewhere.
    runs["a group per param"] = _run(config, threads=1, group_per_param=True)
    for label, run in runs.items():
        assert _same_bits(run, one), f"{config}: {label} differs from 1 thread"


def test_small_steps_stay_on_the_calling_thread():
    prior = _threads(2)
    try:
        params = [torch.nn.Parameter(torch.randn(100)) for _ in range(10)]
        for p in params:
            p.grad = torch.randn(100)
        opt = fusedopt.Adam(params)
        before = helped_runs()
        opt.step()
        assert helped_runs() == before

        many = [torch.nn.Parameter(torch.randn(1024)) for _ in range(2000)]
        for p in many:
            p.grad = torch.randn(1024)
        opt = fusedopt.Adam(many)
        opt.step()
        assert helped_runs() > before
        torch.set_num_threads(1)
        before = helped_runs()
        opt.step()
        assert helped_runs() == before
    finally:
        torch.set_num_threads(prior)


def _digest(opt, params):
    """A hash of params and states through numpy: a torch op on a large tensor
    would enter torch's OpenMP pool, which hangs in a forked child once the
    parent has used it (GNU OpenMP has no fork handler)."""
    h = hashlib.sha256()
    for p in params:
        for t in [p.detach()] + [v for k, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]:
            h.update(t.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_steps_after_the_parent_used_the_helpers(helpers):
    """With the parent's steps on torch's OpenMP team too: the child must not
    enter it (GNU OpenMP hangs there), whatever FUSEDOPT_CPU_HELPERS says."""
    prior = _threads(2)
    try:
        twins = []
        for _ in range(2):
            params = clone_params(make_params([(1024,)] * 600, torch.float32))
            for p, g in zip(params, gradients(params, 0)):
                p.grad = g
            twins.append((fusedopt.Adam(params, lr=1e-2), params))
        before = helped_runs()
        twins[0][0].step()
        assert helped_runs() > before
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one step with the parent's helpers gone
            try:
                twins[1][0].step()
                os.write(write, _digest(*twins[1]).encode())
            finally:
                os._exit(0)
        os.close(write)
        deadline = time.monotonic() + 120
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child's step did not finish")
            time.sleep(0.05)
        with os.fdopen(read) as f:
            assert f.read() == _digest(*twins[0])
    finally:
        torch.set_num_threads(prior)
