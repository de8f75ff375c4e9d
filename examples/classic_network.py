"""The seed document's use case, end to end: a from-scratch network (layers
with hand-written forward and backward passes, no autograd) trained with each
fusedopt.classic optimizer, for classification and for regression, on data
made here. Prints the loss per optimizer and saves a plot of the curves.

    python examples/classic_network.py [--epochs 300] [--out-dir bench-results]
"""
import argparse
import copy
import os

import torch

from fusedopt import classic

OPTIMIZERS = {
    "SGD": lambda: classic.SGDOptimizer(),
    "SGD momentum": lambda: classic.SGDOptimizer(momentum=True, epsilon=0.9),
    "SGD Nesterov": lambda: classic.SGDOptimizer(momentum=True, epsilon=0.9, nesterov=True),
    "AdaGrad": lambda: classic.AdaGradOptimizer(),
    "RMSProp": lambda: classic.RMSPropOptimizer(rho=0.9),
    "RMSProp momentum": lambda: classic.RMSPropOptimizer(momentum=True, rho=0.9, epsilon=0.5),
    "Adam": lambda: classic.AdamOptimizer(),
}
# Learning rates per optimizer family: plain SGD needs a larger step.
ALPHA = {"SGD": 0.03, "SGD momentum": 0.02, "SGD Nesterov": 0.02, "AdaGrad": 0.05, "RMSProp": 0.003,
         "RMSProp momentum": 0.002, "Adam": 0.005}


class Layer:
    """A dense layer, y = activation(x W + b), that owns a copy of the
    optimizer for each of its weights (the seed's design)."""

    def __init__(self, n_in, n_out, activation, optimizer, generator):
        self.W = torch.randn(n_in, n_out, generator=generator) * (2.0 / n_in) ** 0.5
        self.b = torch.zeros(n_out)
        self.activation = activation
        self.W_opt, self.b_opt = copy.copy(optimizer), copy.copy(optimizer)

    def forward(self, x):
        self.x = x
        self.z = x @ self.W + self.b
        return torch.relu(self.z) if self.activation == "relu" else self.z

    def backward(self, grad_out, alpha, lambdaa):
        if self.activation == "relu":
            grad_out = grad_out * (self.z > 0)
        dW, db = self.x.T @ grad_out, grad_out.sum(dim=0)
        grad_in = grad_out @ self.W.T
        # dr: the gradient of the L2 penalty 0.5 * |W|^2; biases are not penalized.
        self.W = self.W_opt.update(self.W, alpha, dW, self.W, lambdaa)
        self.b = self.b_opt.update(self.b, alpha, db, torch.zeros_like(self.b), lambdaa)
        return grad_in


class Network:
    def __init__(self, sizes, optimizer, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.layers = [Layer(n_in, n_out, "relu" if i < len(sizes) - 2 else "linear", optimizer, generator)
                       for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))]

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad, alpha, lambdaa):
        for layer in reversed(self.layers):
            grad = layer.backward(grad, alpha, lambdaa)


def spirals(n_per_class=200, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(classes):
        r = torch.linspace(0.05, 1.0, n_per_class)
        angle = torch.linspace(c * 4.0, (c + 1) * 4.0, n_per_class) + torch.randn(n_per_class, generator=g) * 0.2
        xs.append(torch.stack([r * angle.sin(), r * angle.cos()], dim=1))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs), torch.cat(ys)


def sine(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    return x, x.sin() + 0.05 * torch.randn(n, 1, generator=g)


def train(task, name, epochs, lambdaa=1e-4):
    """Full-batch training; returns the loss per epoch."""
    x, y = spirals() if task == "classification" else sine()
    out = 3 if task == "classification" else 1
    net = Network([x.shape[1], 64, 64, out], OPTIMIZERS[name]())
    losses = []
    for _ in range(epochs):
        pred = net.forward(x)
        if task == "classification":
            probs = pred.softmax(dim=1)
            loss = -probs[torch.arange(len(y)), y].log().mean()
            grad = probs.clone()
            grad[torch.arange(len(y)), y] -= 1
            grad /= len(y)
        else:
            loss = ((pred - y) ** 2).mean()
            grad = 2 * (pred - y) / len(y)
        net.backward(grad, ALPHA[name], lambdaa)
        losses.append(loss.item())
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--out-dir", default="bench-results")
    args = parser.parse_args(argv)

    curves = {}
    for task in ("classification", "regression"):
        print(f"{task}:")
        for name in OPTIMIZERS:
            losses = curves[task, name] = train(task, name, args.epochs)
            print(f"  {name:<17} loss {losses[0]:.4f} -> {losses[-1]:.4f}")

    os.makedirs(args.out_dir, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, task in zip(axes, ("classification", "regression")):
        for name in OPTIMIZERS:
            ax.plot(curves[task, name], label=name)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"{task} (fusedopt.classic)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(args.out_dir, "classic_network.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return curves


if __name__ == "__main__":
    main()
