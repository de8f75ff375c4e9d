"""Adam on one big tensor on a GPU, in the storage modes that move fewer
bytes, against torch's fused fp32 Adam and the device's copy bandwidth:

    python -m benchmarks.gpu_precision --numel 1073741824

Each configuration's bytes per param are what one step must read and write
(param, grad, states, masters or residuals, 8-bit block absmaxes); its
bandwidth is those bytes over the median step time, and its share of the copy
bandwidth (a device-to-device copy_ of a 4 GiB buffer, read + write) is how
close it runs to the memory wall. One configuration at a time holds the GPU
(1B params take 16 GB in fp32 Adam); steps are timed with CUDA events, the
median of --repeats.
"""
import argparse
import statistics

import torch

import fusedopt

QUANT = 260 / 256  # 8-bit state: a code and a share of the block's float32 absmax


def configurations():
    """name -> (param dtype, factory(params), bytes per param moved by a step)."""
    return {
        "torch fused fp32": (torch.float32, lambda p: torch.optim.AdamW(p, fused=True), 4 * 2 + 4 + 8 * 2),
        "fusedopt fp32": (torch.float32, lambda p: fusedopt.AdamW(p), 4 * 2 + 4 + 8 * 2),
        "torch fused bf16": (torch.bfloat16, lambda p: torch.optim.AdamW(p, fused=True), 2 * 2 + 2 + 4 * 2),
        "fusedopt bf16 sr + bf16 states": (
            torch.bfloat16, lambda p: fusedopt.AdamW(p, param_precision="stochastic", state_dtype=torch.bfloat16),
            2 * 2 + 2 + 4 * 2),
        "fusedopt bf16 master": (torch.bfloat16, lambda p: fusedopt.AdamW(p, param_precision="master"),
                                 2 + 2 + 4 * 2 + 8 * 2),
        "fusedopt fp32 8-bit states": (torch.float32, lambda p: fusedopt.AdamW(p, state_dtype="8bit"),
                                       4 * 2 + 4 + 4 * QUANT),
        "fusedopt bf16 8-bit states": (torch.bfloat16, lambda p: fusedopt.AdamW(p, state_dtype="8bit"),
                                       2 * 2 + 2 + 4 * QUANT),
        "fusedopt bf16 sr + 8-bit states": (
            torch.bfloat16, lambda p: fusedopt.AdamW(p, param_precision="stochastic", state_dtype="8bit"),
            2 * 2 + 2 + 4 * QUANT),
    }


def copy_bandwidth(repeats=20):
    src = torch.empty(1 << 30, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * 4 * (1 << 30) / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 30)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    args = parser.parse_args(argv)
    wall = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {wall / 1e9:.0f} GB/s; {args.numel} params")
    wanted = [n for n in args.only.split(",") if n] or list(configurations())
    rows = []
    for name in wanted:  # one configuration's memory at a time: 1B params in fp32 Adam take 16 GB
        dtype, factory, per_param = configurations()[name]
        p = torch.nn.Parameter(torch.randn(args.numel, device="cuda", dtype=torch.float32).to(dtype))
        p.grad = (torch.randn(args.numel, device="cuda", dtype=torch.float32) * 1e-3).to(dtype)
        opt = factory([p])
        for _ in range(2):
            opt.step()
        times = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        median = statistics.median(times)
        rows.append((name, per_param, median, per_param * args.numel / median))
        del opt, p
        torch.cuda.empty_cache()
    base = next((r[2] for r in rows if r[0] == "torch fused fp32"), None)
    print(f"{'configuration':34} {'B/param':>8} {'ms':>8} {'GB/s':>7} {'of copy':>8} {'vs torch fp32':>14}")
    for name, per_param, median, bandwidth in rows:
        speedup = f"{base / median:.2f}x" if base else "-"
        print(f"{name:34} {per_param:8.2f} {median * 1e3:8.2f} {bandwidth / 1e9:7.0f} {bandwidth / wall:8.0%} "
              f"{speedup:>14}")


if __name__ == "__main__":
    main()
