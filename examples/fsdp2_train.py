"""Trains the demo transformer (examples/train_compare.py) sharded with FSDP2
and fusedopt.AdamW, saves a distributed checkpoint halfway, and resumes from
it in a fresh model and optimizer.

    torchrun --nproc-per-node 2 examples/fsdp2_train.py            # gloo on the CPU
    torchrun --nproc-per-node 8 examples/fsdp2_train.py --device cuda --mixed-precision

Every rank keeps its shard of every param, grad and optimizer state (DTensors);
fusedopt updates the local shards in one native call per step. The checkpoint
goes through torch.distributed.checkpoint, so it loads on any number of ranks
and into torch.optim.AdamW as well.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import fusedopt
from train_compare import Classifier, make_batch


def build(device, mixed_precision, seed=0):
    torch.manual_seed(seed)
    model = Classifier().to(device)
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = dict(mesh=mesh, **({"mp_policy": policy} if policy else {}))
    for layer in model.encoder.layers:  # one FSDP unit per transformer layer, as large models do
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    optimizer = fusedopt.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return model, optimizer


def train(model, optimizer, steps, start, device, rank):
    generator = torch.Generator().manual_seed(1000 * rank + start)  # each rank its own data
    step_times = []
    for step in range(start, start + steps):
        tokens, labels = make_batch(generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens.to(device)).float(), labels.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # on DTensor grads, before the step
        begin = time.perf_counter()
        optimizer.step()
        step_times.append(time.perf_counter() - begin)
        if rank == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1:4d}  loss {loss.item():.3f}", flush=True)
    return step_times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mixed-precision", action="store_true", help="bf16 params in forward/backward")
    parser.add_argument("--checkpoint-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank = dist.get_rank()
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    checkpoint = args.checkpoint_dir or os.path.join(tempfile.gettempdir(), "fusedopt-fsdp2-example")

    model, optimizer = build(args.device, args.mixed_precision)
    half = args.steps // 2
    times = train(model, optimizer, half, 0, args.device, rank)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=checkpoint)
    if rank == 0:
        print(f"saved a distributed checkpoint after {half} steps to {checkpoint}", flush=True)

    # A fresh model and optimizer, as a restarted job would have.
    model, optimizer = build(args.device, args.mixed_precision, seed=1)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optimizer_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    times += train(model, optimizer, args.steps - half, half, args.device, rank)

    shard = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}: {shard:,} of {total:,} parameters; optimizer step median "
          f"{statistics.median(times) * 1e3:.2f} ms", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
