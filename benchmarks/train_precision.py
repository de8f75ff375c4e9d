"""Low-precision training comparison: the demo transformer trained with bfloat16
params and states under each fusedopt param_precision, against float32.

    python -m benchmarks --train-precision [--steps 300] [--out-dir bench-results]
    python -m benchmarks.train_precision --help      # every option (lr, weight decay, threads, ...)

Every configuration trains examples/train_compare.py's Classifier from the same
initial weights (cast to the configuration's param dtype) on the same batches
with AdamW; forward and backward run in the params' dtype, the loss in float32.
Optimizer states are in the param's dtype unless said (fusedopt's and torch's
default; float32 beside a master):

    fp32                          float32 params, fusedopt.AdamW (the baseline)
    bf16 nearest                  bfloat16 params rounded to nearest (what torch does)
    bf16 stochastic               param_precision="stochastic"
    bf16 compensated              param_precision="compensated" (+ bfloat16 residual state)
    bf16 master                   param_precision="master" (float32 master copy and states)
    fp32 params, bf16 states      float32 params, state_dtype=torch.bfloat16
    bf16 stochastic, bf16         stochastic params, state_dtype=torch.bfloat16,
      stochastic states           stochastic_states=True
    torch fused                   torch.optim.AdamW(fused=True) on bfloat16 params (the
                                  peer reference for round-to-nearest)
    fp32 params, 8-bit states     state_dtype="8bit" (docs/quantized.md)
    bf16 stochastic, 8-bit        stochastic params, state_dtype="8bit"
    bitsandbytes / torchao 8-bit  their AdamW8bit on float32 params, where installed

Reported per configuration: final training loss (mean of the last 20 steps), its
relative gap to the baseline ((final - baseline) / baseline), loss, gap and
accuracy of the final model on a fixed held-out set (training loss alone is
noisy), the median optimizer step time, and the bytes of param plus optimizer
state per param. Written to <out-dir>/train_precision.json (per-step losses and
step times included) and train_precision.png (smoothed loss curves, and each
curve's gap to the baseline); the table is printed in markdown.

Why lr 1e-4 and weight decay 0.1 (the defaults). Round-to-nearest drops an
update smaller than half the spacing of bfloat16 values around the weight
(2**-9 of it, relative). Adam's updates are about lr in size, so at lr 1e-4 a
weight of magnitude 2**-5 (0.031) or more does not move at all with
round-to-nearest: 55% of this model's params at init (attention in_proj,
embeddings, LayerNorm gains), against 2% at lr 3e-4; and decoupled weight decay
(lr * wd = 1e-5 relative per step) is lost on every weight. That is the regime
of long low-lr training and of the tail of a decay schedule, which stochastic
rounding, compensation and master weights are for. Measured here (300 steps,
batch 64; final-loss gap to fp32 of bf16 nearest / stochastic / compensated /
master): lr 1e-4: +215% / +0.33% / +0.12% / -0.01%, the baseline still learning
(eval accuracy 99.4%, loss 0.13 and falling); lr 3e-4: +80% / +0.36% / +0.98% /
+0.46%, but the baseline has solved the task (100%, loss 0.04), so a relative
gap is a difference of a few 1e-4 in a loss near zero; lr 1e-3: +190% / -33% /
-11% / -34%, the baseline itself unsteady (its 20-step mean loss climbs from
0.08 to 0.17 and back), so the other gaps there are noise. 1e-4 is where the
effect is largest and the baseline not saturated. Weight decay 0.01 instead of
0.1 moves the round-to-nearest gap by 2 points (of 215%) in 300 steps; 0.1 is
kept as the usual value for transformers. The noise floor of the gaps: fp32
runs that differ only in rounding (torch.optim.AdamW, or 2 threads, instead of
fusedopt on 1) end within 0.04% of the baseline. The bf16 modes other than
master keep bfloat16 m and v rounded to nearest (the default state dtype): at
lr 3e-4 compensated with float32 states ends at +0.59% (+0.98% with bfloat16
states) and master with bfloat16 states at +0.67% (+0.46% with float32). Those
lr 3e-4 gaps are of seed 0; seeds 1-3 end with every mode 2-31% below float32
(round-to-nearest too, -37% at seed 1): at that lr the end of a run follows its
trajectory, not its rounding (docs/precision.md has the table).

Everything is seeded (model init, batches, stochastic rounding) and the number
of threads fixed (--threads, default 1: on a small shared machine one thread
is both faster and reproducible), so two runs give the same losses; step times
vary with the machine's load. The default run takes about 3 minutes on 2 cores.
"""
import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import namedtuple

import torch

import fusedopt
from examples.train_compare import Classifier, make_batch

Config = namedtuple("Config", "key label param_dtype make")

BASELINE = "fp32"
FINAL_WINDOW = 20  # training steps averaged for the final loss


def configs(lr, weight_decay, seed):
    def fused(**options):
        return lambda params: fusedopt.AdamW(params, lr=lr, weight_decay=weight_decay, **options)

    bf16 = torch.bfloat16
    return [
        Config("fp32", "fp32 params + states (baseline)", torch.float32, fused()),
        Config("bf16-nearest", "bf16 nearest, bf16 states", bf16, fused()),
        Config("bf16-stochastic", "bf16 stochastic, bf16 states", bf16,
               fused(param_precision="stochastic", seed=seed)),
        Config("bf16-compensated", "bf16 compensated, bf16 states", bf16, fused(param_precision="compensated")),
        Config("bf16-master", "bf16 master, fp32 states", bf16, fused(param_precision="master")),
        Config("fp32-bf16-states", "fp32 params, bf16 states", torch.float32, fused(state_dtype=bf16)),
        Config("bf16-stochastic-bf16-states", "bf16 stochastic, bf16 stochastic states", bf16,
               fused(param_precision="stochastic", state_dtype=bf16, stochastic_states=True, seed=seed)),
        Config("torch-fused-bf16", "torch fused, bf16 params + states", bf16,
               lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)),
        Config("fp32-8bit", "fp32 params, 8-bit states", torch.float32, fused(state_dtype="8bit")),
        Config("bf16-stochastic-8bit", "bf16 stochastic, 8-bit states", bf16,
               fused(param_precision="stochastic", state_dtype="8bit", seed=seed)),
    ] + [Config(key, label, torch.float32, make) for key, label, make in _peers_8bit(lr, weight_decay)]


def _peers_8bit(lr, weight_decay):
    """The peers' 8-bit AdamW on float32 params, where installed (optional)."""
    import importlib.util
    peers = []
    if importlib.util.find_spec("bitsandbytes") is not None:
        def bnb(params):
            import bitsandbytes
            return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
        peers.append(("bnb-8bit", "bitsandbytes AdamW8bit, fp32 params", bnb))
    if importlib.util.find_spec("torchao") is not None:
        def torchao(params):
            import torchao.optim
            return torchao.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
        peers.append(("torchao-8bit", "torchao AdamW8bit, fp32 params", torchao))
    return peers


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_precision", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per configuration")
    p.add_argument("--out-dir", default="bench-results", help="where train_precision.json and .png go")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=64, help="sequences per training batch")
    p.add_argument("--eval-batches", type=int, default=16, help="held-out batches (of --batch sequences)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (fixed, for reproducible numbers)")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, the batches and stochastic rounding")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of the configurations (the baseline always runs): "
                        + ", ".join(c.key for c in configs(0, 0, 0)))
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.only:
        unknown = set(args.only.split(",")) - {c.key for c in configs(0, 0, 0)} - {""}
        if unknown:
            p.error(f"unknown configuration(s) {', '.join(sorted(unknown))}")
    return args


def train(model, optimizer, batches):
    """Per-step training losses (float32 loss of the step's batch before its
    update) and optimizer step times in seconds."""
    model.train()
    losses, step_times = [], []
    for tokens, labels in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tokens).float(), labels)
        loss.backward()
        start = time.perf_counter()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, step_times


@torch.no_grad()
def evaluate(model, batches):
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for tokens, labels in batches:
        logits = model(tokens).float()
        total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += labels.numel()
    return total_loss / count, correct / count


def bytes_per_param(model, optimizer):
    """Bytes of params plus optimizer state (step counts included) per param element."""
    numel = sum(p.numel() for p in model.parameters())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values()
                for v in s.values() if torch.is_tensor(v))
    return (params + state) / numel


def smooth(values, window):
    """Trailing mean over up to `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def run(args):
    torch.manual_seed(args.seed)
    start_model = Classifier()
    generator = torch.Generator().manual_seed(args.seed)
    train_batches = [make_batch(generator, args.batch) for _ in range(args.steps)]
    generator = torch.Generator().manual_seed(args.seed + 1_000_003)
    eval_batches = [make_batch(generator, args.batch) for _ in range(args.eval_batches)]

    chosen = configs(args.lr, args.weight_decay, args.seed)
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [c for c in chosen if c.key in wanted or c.key == BASELINE]

    results = []
    for config in chosen:
        began = time.perf_counter()
        model = copy.deepcopy(start_model).to(config.param_dtype)
        optimizer = config.make(model.parameters())
        losses, step_times = train(model, optimizer, train_batches)
        eval_loss, eval_accuracy = evaluate(model, eval_batches)
        results.append(dict(
            key=config.key, label=config.label, param_dtype=str(config.param_dtype).replace("torch.", ""),
            optimizer=type(optimizer).__module__ + "." + type(optimizer).__name__,
            options={k: (str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v)
                     for k, v in optimizer.defaults.items()
                     if k in ("lr", "weight_decay", "param_precision", "state_dtype", "stochastic_states",
                              "seed", "fused")},
            final_loss=statistics.mean(losses[-FINAL_WINDOW:]),
            eval_loss=eval_loss, eval_accuracy=eval_accuracy,
            median_step_ms=statistics.median(step_times) * 1e3,
            bytes_per_param=bytes_per_param(model, optimizer),
            diverged=not all(math.isfinite(x) for x in losses),
            seconds=time.perf_counter() - began,
            losses=losses, step_times_s=step_times))
        print(f"  {config.label:<42} final loss {results[-1]['final_loss']:.4f}   "
              f"({results[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)

    base = next(r for r in results if r["key"] == BASELINE)
    for r in results:
        r["final_loss_gap"] = (r["final_loss"] - base["final_loss"]) / base["final_loss"]
        r["eval_loss_gap"] = (r["eval_loss"] - base["eval_loss"]) / base["eval_loss"]
    return start_model, results


def table(results):
    lines = ["| configuration | final train loss | gap vs fp32 | eval loss | eval gap | eval accuracy "
             "| optimizer step (median) | param+state bytes/param |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['label']} | {r['final_loss']:.4f} | {r['final_loss_gap']:+.2%} | {r['eval_loss']:.4f} "
                     f"| {r['eval_loss_gap']:+.2%} | {r['eval_accuracy']:.1%} | {r['median_step_ms']:.2f} ms "
                     f"| {r['bytes_per_param']:.1f} |")
    return "\n".join(lines)


def write_chart(path, results, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, min(25, args.steps // 10))
    base = smooth(next(r for r in results if r["key"] == BASELINE)["losses"], window)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True, height_ratios=(3, 2))
    colors = plt.get_cmap("tab10").colors
    styles = ("-", "--", "-", "-.", ":", "--", "-.", ":")
    gaps = [0.0]
    for i, r in enumerate(results):
        curve = smooth(r["losses"], window)
        is_base = r["key"] == BASELINE
        kw = dict(color="black" if is_base else colors[i % len(colors)], linestyle=styles[i % len(styles)],
                  linewidth=2.2 if is_base else 1.4, label=f"{r['label']}  ({r['final_loss_gap']:+.2%})")
        top.plot(curve, **kw)
        gap = [(c - b) / b * 100 for c, b in zip(curve, base)]
        bottom.plot(gap, **kw)
        gaps.extend(g for g in gap if math.isfinite(g))
    top.set_ylabel(f"training loss (mean of {window} steps)")
    top.set_title(f"Demo transformer, AdamW lr {args.lr:g}, weight decay {args.weight_decay:g}, "
                  f"batch {args.batch}: same start, same batches")
    top.legend(fontsize=9, loc="upper right", title="configuration (final-loss gap vs fp32)", title_fontsize=9)
    top.grid(alpha=0.3)
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_yscale("symlog", linthresh=1.0)  # gaps within 1% on a linear scale, larger ones logarithmic
    low, high = min(-0.5, min(gaps) * 1.2), max(1.0, max(gaps) * 1.5)
    bottom.set_ylim(low, high)
    ticks = [t for t in (-1000, -100, -10, -1, -0.5, 0, 0.5, 1, 10, 100, 1000) if low <= t <= high]
    bottom.set_yticks(ticks, [f"{t:g}" for t in ticks])
    bottom.set_ylabel("gap vs fp32 (%, linear within 1%)")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        print(f"training {args.steps} steps per configuration, lr {args.lr:g}, weight decay "
              f"{args.weight_decay:g}, batch {args.batch}, {args.threads} thread(s)", file=sys.stderr)
        start_model, results = run(args)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - began

    params = sum(p.numel() for p in start_model.parameters())
    print(f"{params:,} parameters, {args.steps} steps, AdamW lr {args.lr:g}, weight decay {args.weight_decay:g}, "
          f"batch {args.batch}; final loss = mean of the last {min(FINAL_WINDOW, args.steps)} steps; "
          f"eval on {args.eval_batches * args.batch} held-out sequences")
    print(table(results))
    print(f"total {seconds:.0f} s")

    os.makedirs(args.out_dir, exist_ok=True)
    json_path = os.path.join(args.out_dir, "train_precision.json")
    with open(json_path, "w") as f:
        json.dump(dict(args=vars(args), params=params, final_window=FINAL_WINDOW, seconds=seconds,
                       machine=dict(python=platform.python_version(), torch=torch.__version__,
                                    fusedopt=fusedopt.info(), processor=platform.machine()),
                       results=results), f, indent=1)
    print(f"wrote {json_path}")
    if not args.no_chart:
        png_path = os.path.join(args.out_dir, "train_precision.png")
        write_chart(png_path, results, args)
        print(f"wrote {png_path}")
    return results


if __name__ == "__main__":
    main()
