"""Runs one benchmark case: every implementation on the same layout, checked
against a float64 reference run, then timed in interleaved rounds beside a
pass that moves the same bytes with trivial arithmetic."""
import statistics
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

import fusedopt

from .cases import ALGORITHMS
from .implementations import TORCH_IMPLEMENTATIONS

# Normwise error (max |x - x64| / max |x64|) above which a row is marked wrong.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
LIMIT = "traffic limit"


@dataclass
class Row:
    algorithm: str
    layout: str
    implementation: str
    status: str = "ok"  # "ok", or why it did not run
    times_s: List[float] = field(default_factory=list)
    error: Optional[float] = None  # normwise error against float64
    wrong: bool = False
    bytes_moved: int = 0

    @property
    def median_ms(self):
        return statistics.median(self.times_s) * 1e3 if self.times_s else None

    @property
    def gb_per_s(self):
        return self.bytes_moved / (self.median_ms * 1e6) if self.times_s else None


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _initial_tensors(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) * 1e-2 for s in shapes]
    return params, grads


def _build(impl, cls_name, opts, init, grads, device, dtype):
    # copy=True: no two implementations may share a tensor (nor the originals).
    params = [torch.nn.Parameter(p.to(device=device, dtype=dtype, copy=True)) for p in init]
    for p, g in zip(params, grads):
        p.grad = g.to(device=device, dtype=dtype, copy=True)
    return params, impl.make(cls_name, params, dict(opts))


def _normwise_error(params, reference):
    err = max((p.detach().double().cpu() - r).abs().max().item() for p, r in zip(params, reference) if r.numel())
    scale = max(r.abs().max().item() for r in reference if r.numel())
    return err / scale


def _traffic_pass(shapes, streams, device, dtype):
    """A step-sized pass with trivial arithmetic over the same bytes: on the
    CPU fusedopt's traffic op over one tensor per stream (the bandwidth limit,
    without per-tensor costs); on a GPU a device-to-device copy of them."""
    total = sum(torch.Size(s).numel() for s in shapes)
    grad = torch.zeros(total, device=device, dtype=dtype)
    states = [torch.zeros(total, device=device, dtype=dtype) for _ in range(streams)]
    if device == "cpu" and fusedopt.info()["native"]:
        lists = [[s] for s in states[1:]] + [[]] * (4 - len(states))
        return lambda: torch.ops.fusedopt.traffic_([states[0]], [grad], *lists[:3])
    source = torch.zeros(total * (2 * streams + 1) // 2, device=device, dtype=dtype)
    target = torch.empty_like(source)
    return lambda: target.copy_(source)


def run_case(algorithm, layout, shapes, impls, device="cpu", dtype=torch.float32, repeats=10, warmup=2,
             check_steps=3, extra_impls=()):
    """Returns one Row per implementation (and one for the traffic limit)."""
    cls_name, opts, streams = ALGORITHMS[algorithm]
    total = sum(torch.Size(s).numel() for s in shapes)
    bytes_moved = total * torch.empty((), dtype=dtype).element_size() * (2 * streams + 1)
    init, grads = _initial_tensors(shapes)

    reference_params = [torch.nn.Parameter(p.double()) for p in init]
    for p, g in zip(reference_params, grads):
        p.grad = g.double()
    reference = getattr(fusedopt, cls_name)(reference_params, **opts, backend="reference")
    for _ in range(check_steps):
        reference.step()
    reference = [p.detach() for p in reference_params]

    rows, running = [], []
    for impl in list(impls) + list(extra_impls):
        row = Row(algorithm, layout, impl.name, bytes_moved=bytes_moved)
        rows.append(row)
        status = impl.status(cls_name, device, dtype)
        if status is not None:
            row.status = status
            continue
        params, opt = _build(impl, cls_name, opts, init, grads, device, dtype)
        for _ in range(check_steps):
            # Some implementations change .grad in place (torch's foreach SGD
            # with Nesterov does): every checked step starts from the same grads.
            for p, g in zip(params, grads):
                p.grad.copy_(g)
            opt.step()
        _sync(device)
        row.error = _normwise_error(params, reference)
        row.wrong = not row.error <= (impl.tolerance or TOLERANCE[dtype])
        running.append((row, opt.step))

    limit = Row(algorithm, layout, LIMIT, bytes_moved=bytes_moved)
    rows.append(limit)
    running.append((limit, _traffic_pass(shapes, streams, device, dtype)))
    for round_ in range(warmup + repeats):
        for row, step in running:
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_ >= warmup:
                row.times_s.append(time.perf_counter() - start)
    return rows


def torch_best(rows):
    """The fastest correct torch.optim row of a case, or None."""
    candidates = [r for r in rows if r.implementation in TORCH_IMPLEMENTATIONS and r.times_s and not r.wrong]
    return min(candidates, key=lambda r: r.median_ms, default=None)


def limit_row(rows):
    return next(r for r in rows if r.implementation == LIMIT)
