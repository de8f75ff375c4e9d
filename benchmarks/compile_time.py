"""torch.compile of an optimizer step: the compile time (the first call) and
the steady step time, compiled and eager, of fusedopt.Adam and of
torch.optim.Adam(fused=True), side by side in one process.

    python -m benchmarks.compile_time --params 2000

Each optimizer gets its own copy of --params float32 params of --size
elements with fixed gradients. A compiled step is a function that calls
`opt.step()`, compiled with the default backend (inductor): fullgraph=True
for fusedopt; torch.optim's step() breaks the graph before and after the
update on purpose, and its fused kernel is never traced ("don't trace into
fused optimizer"), so torch's row compiles without fullgraph and runs its
update eagerly. "cold" is the first call with empty inductor and AOTAutograd
caches (a fresh cache directory), "warm" the first call again after
torch._dynamo.reset(): dynamo traces again, the compiled graph comes from
the caches, as in a second run of a program. Step times are the medians of
--repeats rounds that run every row once in turn, after --warmup rounds.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

import fusedopt


def _params(count, size):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(size, generator=g)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=g) * 1e-2
    return params


def _rows(count, size, lr):
    """(name, compiled, step function) per row, each with its own params and
    optimizer, and each compiled row its own function (dynamo caches by code)."""
    fused_eager = fusedopt.Adam(_params(count, size), lr=lr)
    fused_compiled = fusedopt.Adam(_params(count, size), lr=lr)
    torch_eager = torch.optim.Adam(_params(count, size), lr=lr, fused=True)
    torch_compiled = torch.optim.Adam(_params(count, size), lr=lr, fused=True)

    @torch.compile(fullgraph=True)
    def fusedopt_step():
        fused_compiled.step()

    @torch.compile
    def torch_step():
        torch_compiled.step()

    return [("fusedopt.Adam", False, fused_eager.step), ("fusedopt.Adam", True, fusedopt_step),
            ("torch.optim.Adam(fused=True)", False, torch_eager.step),
            ("torch.optim.Adam(fused=True)", True, torch_step)]


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(count=2000, size=1024, repeats=20, warmup=3, tensor_lr=False):
    """{(name, compiled): {"cold_s", "warm_s" (compiled rows), "median_ms"}}"""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="fusedopt-compile-time-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            return _measure(count, size, repeats, warmup, tensor_lr)
        finally:
            torch._dynamo.reset()
            if previous is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


def _measure(count, size, repeats, warmup, tensor_lr):
    # Inductor's one-time start (imports, the C++ toolchain check) counts for no row.
    torch.compile(lambda x: x + 1)(torch.ones(1))
    lr = torch.tensor(1e-3) if tensor_lr else 1e-3
    rows = _rows(count, size, lr)
    results = {(name, compiled): {} for name, compiled, _ in rows}
    for what in ("cold_s", "warm_s"):
        torch._dynamo.reset()
        for name, compiled, step in rows:
            elapsed = _timed(step)
            if compiled:
                results[(name, compiled)][what] = elapsed
    times = {key: [] for key in results}
    for round_ in range(warmup + repeats):
        for name, compiled, step in rows:
            elapsed = _timed(step)
            if round_ >= warmup:
                times[(name, compiled)].append(elapsed)
    for key, values in times.items():
        results[key]["median_ms"] = statistics.median(values) * 1e3
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=2000, help="number of params")
    parser.add_argument("--size", type=int, default=1024, help="elements per param")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tensor-lr", action="store_true", help="lr as a tensor (no recompile when it changes)")
    args = parser.parse_args(argv)
    results = run(args.params, args.size, args.repeats, args.warmup, args.tensor_lr)
    print(f"Adam, {args.params} x {args.size} float32 params, lr as a {'tensor' if args.tensor_lr else 'float'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'optimizer':<30} {'mode':<9} {'first call, cold s':>18} {'warm s':>8} {'median step ms':>15}")
    for (name, compiled), result in results.items():
        cold, warm = (f"{result[k]:.2f}" if k in result else "-" for k in ("cold_s", "warm_s"))
        print(f"{name:<30} {'compiled' if compiled else 'eager':<9} {cold:>18} {warm:>8} "
              f"{result['median_ms']:>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
