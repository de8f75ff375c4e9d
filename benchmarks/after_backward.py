"""python -m benchmarks --after-backward: the optimizer step where a CPU
training loop takes it, right after a backward pass.

backward() ends with torch's OpenMP threads spinning on the other cores for a
few ms; a step that then wakes threads of its own waits for the scheduler to
give them a core. This case trains a stack of Linear layers, one model per
implementation, the implementations interleaved round by round in one
process, and times each step twice: right after forward + backward, and again
after a pause (no torch work before it). fusedopt runs twice, choosing its
helpers per job (the default) and with FUSEDOPT_CPU_HELPERS=pool (its own
helper threads only). Timings are reported, never asserted.
"""
import argparse
import os
import statistics
import time

import torch

import fusedopt

from . import report

OPTIMIZERS = {
    "adamw": (lambda params: fusedopt.AdamW(params, lr=1e-4),
              lambda params: torch.optim.AdamW(params, lr=1e-4, fused=True)),
    "sgd-momentum": (lambda params: fusedopt.SGD(params, lr=1e-4, momentum=0.9),
                     lambda params: torch.optim.SGD(params, lr=1e-4, momentum=0.9, fused=True)),
}
# implementation -> (which optimizer of the pair, FUSEDOPT_CPU_HELPERS)
IMPLEMENTATIONS = {"fusedopt": (0, None), "fusedopt helpers only": (0, "pool"), "torch fused": (1, None)}
ENV = "FUSEDOPT_CPU_HELPERS"


def _model(layers, width, dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(dtype)


def run(algorithm="adamw", dtype=torch.float32, layers=4, width=2048, batch=32, rounds=30, warmup=3,
        pause_s=0.01):
    """{implementation: {"after backward": [s], "after a pause": [s]}}"""
    prior = os.environ.get(ENV)
    runs = {}
    for name, (which, _) in IMPLEMENTATIONS.items():
        model = _model(layers, width, dtype)
        runs[name] = (model, OPTIMIZERS[algorithm][which](list(model.parameters())))
    x = torch.randn(batch, width, dtype=dtype)
    times = {name: {"after backward": [], "after a pause": []} for name in runs}
    try:
        for r in range(warmup + rounds):
            for name, (model, opt) in runs.items():
                helpers = IMPLEMENTATIONS[name][1]
                if helpers is None:
                    os.environ.pop(ENV, None)
                else:
                    os.environ[ENV] = helpers
                model(x).float().square().mean().backward()
                start = time.perf_counter()
                opt.step()
                after_backward = time.perf_counter() - start
                time.sleep(pause_s)
                start = time.perf_counter()
                opt.step()
                after_pause = time.perf_counter() - start
                opt.zero_grad(set_to_none=False)
                if r >= warmup:
                    times[name]["after backward"].append(after_backward)
                    times[name]["after a pause"].append(after_pause)
    finally:
        if prior is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = prior
    return times


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks --after-backward", description=__doc__.splitlines()[0])
    p.add_argument("--algorithm", choices=sorted(OPTIMIZERS), default="adamw")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--layers", type=int, default=4, help="Linear(width, width) layers")
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--out-dir", default="bench-results", help="where after_backward.json goes")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(report.machine_line())
    params = args.layers * (args.width * args.width + args.width)
    print(f"{args.algorithm}, {args.dtype}, {args.layers} x Linear({args.width}, {args.width}) = {params:,} params, "
          f"batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    times = run(args.algorithm, getattr(torch, args.dtype), args.layers, args.width, args.batch, args.rounds,
                args.warmup)
    rows = []
    print(f"{'implementation':24s} {'after backward':>16s} {'p90':>8s} {'after a pause':>15s} {'p90':>8s}")
    for name, phases in times.items():
        cells = []
        for phase, values in phases.items():
            median, p90 = statistics.median(values), report.percentile(values, 0.9)
            rows.append(dict(implementation=name, phase=phase, median_ms=median * 1e3, p90_ms=p90 * 1e3,
                             times_s=values))
            cells.append(f"{median * 1e3:16.2f} {p90 * 1e3:8.2f}")
        print(f"{name:24s} {cells[0]} {cells[1][1:]}")
    print("(ms; medians and 90th percentiles of the step)")
    print(f"wrote {report.write_rows(args.out_dir, 'after_backward.json', vars(args), rows)}")
    return 0
