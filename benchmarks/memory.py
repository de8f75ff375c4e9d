"""Peak memory of fusedopt steps: after the first step has created the state,
how much resident memory do further steps add? The answer should be a small
fixed scratch (a few pointer lists), independent of the parameter count.

    python -m benchmarks.memory [--numel N] [--small-count K] [--steps S]

Linux only: it resets the process's peak RSS through /proc/self/clear_refs
and reads VmHWM/VmRSS from /proc/self/status.
"""
import argparse
import gc

import torch

import fusedopt

from .cases import ALGORITHMS


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(algorithm, shapes, steps):
    """(MiB of params + grads + states, MiB the steps added at their peak)."""
    cls_name, opts, streams = ALGORITHMS[algorithm]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = getattr(fusedopt, cls_name)(params, **opts)
    opt.step()  # creates the state
    opt.step()  # builds the plan
    gc.collect()
    data = sum(p.numel() * p.element_size() for p in params) * (streams + 1)
    _reset_peak()
    before = _status_kib("VmRSS")
    for _ in range(steps):
        opt.step()
    peak = _status_kib("VmHWM")
    return data / 2**20, (peak - before) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=16 * 2**20)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{'algorithm':<17}{'layout':<22}{'data MiB':>10}{'added by steps MiB':>20}")
    for layout, shapes in (("1 x %d" % args.numel, [(args.numel,)]), (f"{args.small_count} x 1024",
                                                                       [(1024,)] * args.small_count)):
        for algorithm in ALGORITHMS:
            data, added = measure(algorithm, shapes, args.steps)
            print(f"{algorithm:<17}{layout:<22}{data:>10.1f}{added:>20.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
