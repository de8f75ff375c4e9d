"""python -m benchmarks --contended: the same optimizer step on a quiet host and
while busy processes hold every core.

A training process seldom has the CPU to itself: data loader workers, compile
workers and other jobs keep the cores busy, and a step that waits for a thread
the scheduler has not run stalls for a time slice. This case times each
implementation's step in quiet and contended phases, one process, the
implementations interleaved round by round, and reports the median and the
90th percentile of each. The busy processes are started and stopped here:
plain Python spin loops (or numpy loops that also move memory), one per core
by default. Timings are reported, never asserted.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from . import implementations, report
from .cases import ALGORITHMS, LAYOUTS, layout_label, layout_shapes
from .measure import _build, _initial_tensors, _sync

# A busy process: spins until its parent is gone or it is stopped, after one
# line on stdout that says it runs.
BUSY = {
    "python": "x = 0\nwhile True:\n    for _ in range(1_000_000):\n        x += 1\n    check()\n",
    "numpy": ("import numpy as np\na = np.ones(1 << 21)\nwhile True:\n    for _ in range(50):\n"
              "        np.multiply(a, 1.0000001, out=a)\n    check()\n"),
}
_PRELUDE = ("import os, sys\nparent = os.getppid()\n"
            "def check():\n    if os.getppid() != parent:\n        sys.exit(0)\n"
            "print('ready', flush=True)\n")

PHASES = ("quiet", "contended")


class BusyProcesses:
    """`count` busy processes of `kind`, running inside the with block."""

    def __init__(self, count, kind="python"):
        self.count, self.kind, self.procs = count, kind, []

    def __enter__(self):
        for _ in range(self.count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", _PRELUDE + BUSY[self.kind]],
                                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
        for p in self.procs:
            p.stdout.readline()  # "ready"
        time.sleep(0.2)  # let the scheduler spread them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
            p.stdout.close()
        self.procs = []


def _time_phase(running, device, rounds, warmup, budget_s):
    """Interleaved rounds; an implementation stops early once it has used
    budget_s (and has at least 5 timed rounds), so a step that stalls for
    seconds does not hold up the run."""
    times = {name: [] for name, _ in running}
    spent = {name: 0.0 for name, _ in running}
    for round_ in range(warmup + rounds):
        for name, step in running:
            if spent[name] > budget_s and len(times[name]) >= 5:
                continue
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            elapsed = time.perf_counter() - start
            spent[name] += elapsed
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def run_layout(algorithm, layout, shapes, impls, busy, busy_kind="python", device="cpu", dtype=torch.float32,
               rounds=40, warmup=3, budget_s=20.0, cycles=2):
    """One result dict per (implementation, phase) for one layout. The quiet
    and contended phases alternate `cycles` times, so a drift of the host
    (another job starting) does not fall on one phase only."""
    cls_name, opts, _ = ALGORITHMS[algorithm]
    init, grads = _initial_tensors(shapes)
    running = []
    for impl in impls:
        if impl.status(cls_name, device, dtype) is None:
            _, opt = _build(impl, cls_name, opts, init, grads, device, dtype)
            running.append((impl.name, opt.step))
    times = {(name, phase): [] for name, _ in running for phase in PHASES}
    per_cycle = max(1, rounds // cycles)
    for _ in range(cycles):
        for phase in PHASES:
            if phase == "quiet":
                got = _time_phase(running, device, per_cycle, warmup, budget_s / cycles)
            else:
                with BusyProcesses(busy, busy_kind):
                    got = _time_phase(running, device, per_cycle, warmup, budget_s / cycles)
            for name, ts in got.items():
                times[(name, phase)] += ts
    label = layout_label(layout, shapes)
    return [dict(algorithm=algorithm, layout=label, implementation=name, phase=phase, busy=busy if
                 phase == "contended" else 0, times_s=ts, median_ms=statistics.median(ts) * 1e3,
                 p90_ms=report.percentile(ts, 0.9) * 1e3)
            for (name, phase), ts in times.items()]


def table(rows):
    lines = [f"{'layout':<34}{'implementation':<16}{'quiet median':>13}{'p90':>9}{'contended median':>18}"
             f"{'p90':>9}{'median x':>10}{'p90 x':>8}"]
    by_key = {(r["layout"], r["implementation"], r["phase"]): r for r in rows}
    for layout, name in dict.fromkeys((r["layout"], r["implementation"]) for r in rows):
        quiet, busy = by_key[(layout, name, "quiet")], by_key[(layout, name, "contended")]
        lines.append(f"{layout:<34}{name:<16}{quiet['median_ms']:>13.2f}{quiet['p90_ms']:>9.2f}"
                     f"{busy['median_ms']:>18.2f}{busy['p90_ms']:>9.2f}"
                     f"{busy['median_ms'] / quiet['median_ms']:>9.1f}x"
                     f"{busy['p90_ms'] / quiet['median_ms']:>7.1f}x")
    lines.append("(ms; 'x': contended median and p90 over the quiet median)")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks --contended", description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", default="adam", choices=sorted(ALGORITHMS))
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated, as for python -m benchmarks")
    p.add_argument("--numel", type=int, default=16 * 2**20, help="elements of the 'large' tensor")
    p.add_argument("--small-count", type=int, default=2000, help="tensors in the 'small' layout")
    p.add_argument("--small-size", type=int, default=1024, help="elements of each 'small' tensor")
    p.add_argument("--implementations", default="fusedopt,torch fused", help="comma-separated")
    p.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes (default: one per core)")
    p.add_argument("--busy-kind", choices=sorted(BUSY), default="python")
    p.add_argument("--rounds", type=int, default=40, help="timed rounds per implementation and phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds at the start of each phase")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of steps per implementation and phase, after which it stops early")
    p.add_argument("--out-dir", default="bench-results", help="where contended.json goes")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    impls = implementations.by_name([n for n in args.implementations.split(",") if n])
    layouts = {layout: layout_shapes(layout, args.numel, args.small_count, args.small_size)
               for layout in args.layouts.split(",") if layout}
    print(report.machine_line())
    print(f"contended: {args.busy} busy {args.busy_kind} process(es)")
    rows = []
    for layout, shapes in layouts.items():
        rows += run_layout(args.algorithm, layout, shapes, impls, args.busy, args.busy_kind, rounds=args.rounds,
                           warmup=args.warmup, budget_s=args.budget)
    print(table(rows))
    print(f"wrote {report.write_rows(args.out_dir, 'contended.json', vars(args), rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
