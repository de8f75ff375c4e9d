"""A small step-time comparison: fusedopt's native step against torch.optim's
for-loop, foreach and fused steps, on one large tensor and on many small ones.

Implementations run interleaved in one process and the table shows medians,
because this machine is shared and noisy. No figure here is asserted anywhere.

    python -m benchmarks.step_time [--numel N] [--small-count K] [--repeats R]
"""
import argparse
import statistics
import time

import torch

import fusedopt

ALGORITHMS = {
    "SGD": dict(lr=0.01, momentum=0.9),
    "Adagrad": dict(lr=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.9),
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3),
}
TORCH_FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}


def implementations(name):
    """(label, factory) for every implementation of `name` on the CPU."""
    opts = ALGORITHMS[name]
    impls = [("fusedopt", lambda p: getattr(fusedopt, name)(p, **opts)),
             ("torch for-loop", lambda p: getattr(torch.optim, name)(p, **opts, foreach=False)),
             ("torch foreach", lambda p: getattr(torch.optim, name)(p, **opts, foreach=True))]
    if name in TORCH_FUSED:
        impls.append(("torch fused", lambda p: getattr(torch.optim, name)(p, **opts, fused=True)))
    return impls


def make_params(shapes):
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def time_interleaved(name, shapes, repeats):
    """Median step time (s) of each implementation, rounds interleaved."""
    runs = []
    for label, factory in implementations(name):
        params = make_params(shapes)
        opt = factory(params)
        opt.step()  # state creation is not part of a step
        runs.append((label, opt, []))
    for _ in range(repeats):
        for _, opt, times in runs:
            start = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - start)
    return {label: statistics.median(times) for label, _, times in runs}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=16 * 2**20, help="elements of the large tensor")
    parser.add_argument("--small-count", type=int, default=2000, help="number of 1024-element tensors")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    info = fusedopt.info()
    print(f"fusedopt {fusedopt.__version__}, torch {torch.__version__}, CPU ISA {info['cpu_isa']}, "
          f"{torch.get_num_threads()} threads")
    layouts = {f"1 x {args.numel:,}": [(args.numel,)], f"{args.small_count} x 1,024": [(1024,)] * args.small_count}
    print(f"{'algorithm':<9} {'layout':<16} {'implementation':<16} {'median ms':>10} {'vs fusedopt':>12}")
    for name in ALGORITHMS:
        for layout, shapes in layouts.items():
            medians = time_interleaved(name, shapes, args.repeats)
            ours = medians["fusedopt"]
            for label, t in medians.items():
                print(f"{name:<9} {layout:<16} {label:<16} {t * 1e3:>10.2f} {t / ours:>11.2f}x")


if __name__ == "__main__":
    main()
