"""FSDP2 optimizer step per rank: fusedopt against torch's fused and foreach
steps on the same DTensor shards, and fusedopt on plain tensors the size of
the local shards (what the step would cost without DTensors).

    python -m benchmarks.fsdp [--ranks 2] [--layout transformer] [--repeats 15]

Each rank runs the implementations in interleaved rounds on its own shards
(gloo on 127.0.0.1; the ranks share this machine's cores, so each uses
cores / ranks threads) and rank 0 prints every rank's medians.
"""
import argparse
import os
import socket
import statistics
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .cases import layout_shapes

IMPLEMENTATIONS = ("fusedopt", "fusedopt on local tensors", "torch fused", "torch foreach")


def _make(name, params, lr=1e-3):
    import fusedopt
    if name.startswith("fusedopt"):
        return fusedopt.AdamW(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr, fused=name == "torch fused", foreach=name == "torch foreach")


def _worker(rank, ranks, port, args, queue):
    warnings.simplefilter("ignore")  # torch's notes on DTensor random ops, once per rank
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or ranks) // ranks))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    from torch.distributed.fsdp import fully_shard

    shapes = layout_shapes(args.layout, args.numel, args.small_count, args.small_size)
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(s, generator=g) for s in shapes]
    optimizers = {}
    for name in IMPLEMENTATIONS:
        module = torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in full])
        fully_shard(module)
        params = list(module.parameters())
        if name == "fusedopt on local tensors":
            params = [torch.nn.Parameter(p._local_tensor.detach().clone()) for p in params]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        optimizers[name] = _make(name, params)
    times = {name: [] for name in IMPLEMENTATIONS}
    for round_ in range(args.warmup + args.repeats):
        for name, opt in optimizers.items():
            dist.barrier()
            start = time.perf_counter()
            opt.step()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    local = sum(p._local_tensor.numel() for p in module.parameters())
    queue.put((rank, local, {name: statistics.median(t) * 1e3 for name, t in times.items()}))
    dist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--layout", default="transformer")
    parser.add_argument("--numel", type=int, default=16 * 2**20)
    parser.add_argument("--small-count", type=int, default=2000)
    parser.add_argument("--small-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_worker, args=(args.ranks, port, args, queue), nprocs=args.ranks, start_method="spawn")
    results = sorted(queue.get() for _ in range(args.ranks))
    shapes = layout_shapes(args.layout, args.numel, args.small_count, args.small_size)
    print(f"AdamW step per rank, FSDP2 over {args.ranks} gloo ranks, layout {args.layout} "
          f"({len(shapes)} tensors), median ms of {args.repeats} interleaved rounds")
    header = f"{'rank':<5} {'local elements':>15} " + " ".join(f"{name:>26}" for name in IMPLEMENTATIONS)
    print(header)
    for rank, local, medians in results:
        print(f"{rank:<5} {local:>15,} " + " ".join(f"{medians[name]:>26.2f}" for name in IMPLEMENTATIONS))
    for rank, _, medians in results:
        best = min(medians["torch fused"], medians["torch foreach"])
        print(f"rank {rank}: fusedopt {best / medians['fusedopt']:.2f}x torch's best; DTensor overhead "
              f"{medians['fusedopt'] / medians['fusedopt on local tensors']:.2f}x the step on plain local tensors")
    return results


if __name__ == "__main__":
    main()
