"""Trains a small transformer classifier with fusedopt.AdamW and with
torch.optim.AdamW from the same start, on data made here, and shows that the
loss curves overlap and how long each optimizer step takes.

    python examples/train_compare.py [--steps 300] [--out-dir bench-results]

The task: label a random token sequence by which of 4 marker tokens appears
most often in it; a 2-layer transformer learns it in a few hundred steps.
"""
import argparse
import copy
import os
import statistics
import time

import torch

import fusedopt

VOCAB, SEQ, CLASSES = 64, 32, 4


def make_batch(generator, batch=64):
    tokens = torch.randint(CLASSES, VOCAB, (batch, SEQ), generator=generator)
    counts = torch.randint(0, 6, (batch, CLASSES), generator=generator)
    for b in range(batch):
        positions = torch.randperm(SEQ, generator=generator)[: int(counts[b].sum())]
        tokens[b, positions] = torch.repeat_interleave(torch.arange(CLASSES), counts[b])
    return tokens, counts.argmax(dim=1)


class Classifier(torch.nn.Module):
    def __init__(self, d_model=128):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, d_model)
        self.pos = torch.nn.Parameter(torch.randn(SEQ, d_model) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d_model, CLASSES)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(dim=1))


def train(model, optimizer, steps, seed=0):
    generator = torch.Generator().manual_seed(seed)
    losses, step_times = [], []
    for _ in range(steps):
        tokens, labels = make_batch(generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens), labels)
        loss.backward()
        start = time.perf_counter()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return losses, step_times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out-dir", default="bench-results")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    start_model = Classifier()
    results = {}
    for name, make in (("fusedopt.AdamW", lambda p: fusedopt.AdamW(p, lr=1e-3)),
                       ("torch.optim.AdamW", lambda p: torch.optim.AdamW(p, lr=1e-3))):
        model = copy.deepcopy(start_model)
        results[name] = train(model, make(model.parameters()), args.steps)

    params = sum(p.numel() for p in start_model.parameters())
    print(f"{params:,} parameters, {args.steps} steps")
    for name, (losses, times) in results.items():
        first, last = statistics.mean(losses[:20]), statistics.mean(losses[-20:])
        print(f"{name:<18} loss {first:.3f} -> {last:.3f}   optimizer step median {statistics.median(times) * 1e3:.3f} ms")
    ours, theirs = (results[k][0] for k in results)
    print(f"largest loss difference between the two runs: {max(abs(a - b) for a, b in zip(ours, theirs)):.2e}")

    os.makedirs(args.out_dir, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, (losses, _)), style in zip(results.items(), ("-", "--")):
        ax.plot(losses, style, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Same model, same data, same start: fusedopt vs torch.optim")
    ax.legend()
    path = os.path.join(args.out_dir, "train_compare.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
