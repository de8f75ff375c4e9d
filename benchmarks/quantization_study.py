"""Which 8-bit code for Adam's states: the study behind docs/quantized.md.

    python -m benchmarks.quantization_study

Trains the classifier of examples/train_compare.py for 150 AdamW steps in
float32, takes the real exp_avg / exp_avg_sq of its tensors of 4096 elements
or more, codes them in blocks of 256 with each candidate code (nearest code
value, block absmax scaling), and measures what Adam's update m / (sqrt(v) +
eps) becomes: its relative error over all elements, the worst relative error
of one element, and the worst amplification (how much larger than the exact
update one element's update gets: the number that matters for stability, a
v coded too small blows an update up).
"""
import os
import sys

import torch

from fusedopt.reference import quantized

BLOCK = 256
EPS = 1e-8


def adam_states(steps=150):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from train_compare import Classifier, make_batch
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = make_batch(g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    big = [p for p in model.parameters() if p.numel() >= 4096]
    m = torch.cat([opt.state[p]["exp_avg"].flatten() for p in big])
    v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in big])
    n = m.numel() // BLOCK * BLOCK
    return m[:n].view(-1, BLOCK), v[:n].view(-1, BLOCK)


def dynamic_tree(signed, max_exp=7):
    """bitsandbytes' dynamic map (create_dynamic_map), rebuilt from its description."""
    values = {0.0, 1.0} | ({-1.0} if signed else set())
    bits = 7
    for i in range(max_exp):
        items = 2 ** (i + bits - max_exp) + 1 if signed else 2 ** (i + bits - max_exp + 1) + 1
        edges = torch.linspace(0.1, 1, items)
        for mid in ((edges[:-1] + edges[1:]) / 2).tolist():
            values.add(10.0 ** (i - max_exp + 1) * mid)
            if signed:
                values.add(-(10.0 ** (i - max_exp + 1)) * mid)
    return torch.tensor(sorted(values))


def float_code(exponent_bits, mantissa_bits, signed):
    """A small float format scaled so its largest value is 1 (subnormals included)."""
    bias = 2 ** exponent_bits - 1
    values = {0.0}
    for e in range(2 ** exponent_bits):
        for m in range(2 ** mantissa_bits):
            value = (m / 2 ** mantissa_bits) * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2 ** mantissa_bits) * 2.0 ** (e - bias)
            if value <= 1.0:
                values.add(value)
    if signed:
        values |= {-v for v in values}
    return torch.tensor(sorted(values))


def nearest(x, code):
    """Each block scaled by its absmax and rounded to the nearest code value."""
    absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    y = (x / absmax).contiguous()
    i = torch.searchsorted(code, y).clamp(1, len(code) - 1)
    low, high = code[i - 1], code[i]
    return torch.where((y - low).abs() <= (high - y).abs(), low, high) * absmax


def ours(x, signed):
    """fusedopt's code (fusedopt.reference.quantized), as the kernels store it."""
    flat = x.reshape(-1)
    return quantized.dequantize(quantized.quantize(flat, signed), flat.shape, signed).view_as(x)


def measure(m, v, mq, vq):
    exact = m / (v.sqrt() + EPS)
    coded = mq / (vq.sqrt() + EPS)
    floor = 1e-3 * exact.pow(2).mean().sqrt()  # elements with a negligible update don't count as worst
    relative = ((coded - exact).norm() / exact.norm()).item()
    worst = ((coded - exact).abs() / (exact.abs() + floor)).max().item()
    amplification = (coded.abs() / (exact.abs() + floor)).max().item()
    return relative, worst, amplification


def candidates(m, v):
    linear_signed, linear_unsigned = torch.linspace(-1, 1, 255), torch.linspace(0, 1, 256)
    return {
        "dynamic tree (bitsandbytes), m and v": (nearest(m, dynamic_tree(True)), nearest(v, dynamic_tree(False))),
        "fusedopt: decade-interval tree, m 7 / v 8 decades": (ours(m, True), ours(v, False)),
        "linear m, linear sqrt(v)": (nearest(m, linear_signed), nearest(v.sqrt(), linear_unsigned) ** 2),
        "E3M4 m, E4M4 sqrt(v)": (nearest(m, float_code(3, 4, True)), nearest(v.sqrt(), float_code(4, 4, False)) ** 2),
        "E4M3 m, E4M4 sqrt(v)": (nearest(m, float_code(4, 3, True)), nearest(v.sqrt(), float_code(4, 4, False)) ** 2),
        "dynamic tree m, E3M5 v": (nearest(m, dynamic_tree(True)), nearest(v, float_code(3, 5, False))),
    }


def main():
    m, v = adam_states()
    print(f"{m.numel()} Adam state elements in blocks of {BLOCK}")
    print(f"{'code':52} {'update rel. error':>18} {'worst element':>14} {'worst amplification':>20}")
    for name, (mq, vq) in candidates(m, v).items():
        relative, worst, amplification = measure(m, v, mq, vq)
        print(f"{name:52} {relative:18.3e} {worst:14.2f} {amplification:19.2f}x")


if __name__ == "__main__":
    main()
