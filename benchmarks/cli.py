"""python -m benchmarks: fusedopt against its references and its peers.

Every implementation runs the same steps on the same parameters, is checked
against a float64 reference, and is timed in interleaved rounds (medians;
this machine may be shared and noisy) beside the traffic limit: a pass that
reads and writes the same bytes with trivial arithmetic. Timings are
reported, never asserted.
"""
import argparse
import os
import sys

import torch

from . import implementations, report
from .cases import ALGORITHMS, LAYOUTS, layout_label, layout_shapes
from .measure import run_case

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--algorithms", default=",".join(ALGORITHMS),
                   help=f"comma-separated, from: {', '.join(ALGORITHMS)}")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="comma-separated, from: large, small, transformer, model:mlp|transformer|convnet")
    p.add_argument("--numel", type=int, default=16 * 2**20, help="elements of the 'large' tensor")
    p.add_argument("--small-count", type=int, default=2000, help="tensors in the 'small' layout")
    p.add_argument("--small-size", type=int, default=1024, help="elements of each 'small' tensor")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--implementations", default=None,
                   help="comma-separated subset of: " + ", ".join(i.name for i in implementations.IMPLEMENTATIONS))
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per case")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per case")
    p.add_argument("--out-dir", default="bench-results", help="where results.json and results.png go")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--train", action="store_true", help="run the end-to-end training demo instead")
    p.add_argument("--train-precision", action="store_true",
                   help="run the low-precision training comparison instead (bfloat16 params and states "
                        "under each param_precision against float32; more options: "
                        "python -m benchmarks --train-precision --help)")
    p.add_argument("--contended", action="store_true",
                   help="time the step quiet and while busy processes hold every core instead (median and "
                        "p90; more options: python -m benchmarks --contended --help)")
    p.add_argument("--after-backward", action="store_true",
                   help="time the step right after a backward pass and after a pause instead (fusedopt with "
                        "its helpers chosen per job and with its own only, torch fused; more options: "
                        "python -m benchmarks --after-backward --help)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps for --train and --train-precision (default 300)")
    return p.parse_args(argv)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # These two have options of their own: everything else on the line is theirs.
    if "--contended" in argv:
        from . import contended
        return contended.main([a for a in argv if a != "--contended"])
    if "--after-backward" in argv:
        from . import after_backward
        return after_backward.main([a for a in argv if a != "--after-backward"])
    if "--train-precision" in argv:
        from . import train_precision
        train_precision.main([a for a in argv if a != "--train-precision"])
        return 0
    args = parse_args(argv)
    steps = [] if args.steps is None else ["--steps", str(args.steps)]
    if args.train:
        from examples import train_compare
        train_compare.main(["--out-dir", args.out_dir] + steps)
        return 0
    algorithms = [a for a in args.algorithms.split(",") if a]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        fail(f"unknown algorithm(s) {unknown}; choose from {', '.join(ALGORITHMS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked for, but torch sees no CUDA device (is this a CPU build of torch?)")
    try:
        impls = implementations.by_name(args.implementations.split(",") if args.implementations else None)
        layouts = {layout: layout_shapes(layout, args.numel, args.small_count, args.small_size)
                   for layout in args.layouts.split(",") if layout}
    except ValueError as exc:
        fail(str(exc))
    dtype = DTYPES[args.dtype]

    print(report.machine_line())
    from tqdm import tqdm
    cases = []
    todo = [(a, layout) for layout in layouts for a in algorithms]
    for algorithm, layout in tqdm(todo, desc="benchmark", unit="case", file=sys.stderr):
        shapes = layouts[layout]
        cases.append(run_case(algorithm, layout_label(layout, shapes), shapes, impls, device=args.device,
                              dtype=dtype, repeats=args.repeats, warmup=args.warmup))
    print(report.table(cases))

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "results.json")
    report.write_json(json_path, cases, {k: v for k, v in vars(args).items()})
    print(f"wrote {json_path}")
    if not args.no_chart:
        png_path = os.path.join(args.out_dir, "results.png")
        report.write_chart(png_path, cases)
        print(f"wrote {png_path}")
    return 0
