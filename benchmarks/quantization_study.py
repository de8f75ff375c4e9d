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

Coding a state once is half the story: an 8-bit optimizer codes its states
again every step, and a slow average (v moves by 1 - beta2 = 0.1% a step)
whose change stays under half a code step is rounded back to where it was. So
a second run (300 steps at lr 1e-4 and weight decay 0.1, as `python -m
benchmarks --train-precision` trains) keeps a coded copy of v for each
candidate v code, updated from the real gradients every step, and reports the
update with that v against the exact one (its projection on the exact update:
1.00 is unbiased, above 1 means updates too large because v lags low).
"""
import os
import sys

import torch

from fusedopt.reference import low_precision, quantized

BLOCK = 256
EPS = 1e-8


def adam_states(steps=150, lr=1e-3, weight_decay=0.01, v_codes=None):
    """exp_avg and exp_avg_sq (blocks of BLOCK) after `steps` AdamW steps, and
    for each of v_codes (name: function of a flat v giving it coded and
    decoded) the projection of the update with the coded v kept step by step."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    from train_compare import Classifier, make_batch
    torch.manual_seed(0)
    model = Classifier()
    beta1, beta2 = 0.9, 0.999
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    big = [p for p in model.parameters() if p.numel() >= 4096]
    kept = {name: [torch.zeros(p.numel()) for p in big] for name in (v_codes or {})}
    projection = {}
    for step in range(1, steps + 1):
        x, y = make_batch(g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        for name, code in (v_codes or {}).items():
            along = norm = 0.0
            for i, p in enumerate(big):
                grad = p.grad.flatten()
                m, v = opt.state[p]["exp_avg"].flatten(), opt.state[p]["exp_avg_sq"].flatten()
                exact = m / ((v / (1 - beta2 ** step)).sqrt() + EPS)
                if name.startswith("m: "):  # a code of m, with the exact v
                    kept[name][i] = code(beta1 * kept[name][i] + (1 - beta1) * grad, step, i)
                    coded = kept[name][i] / ((v / (1 - beta2 ** step)).sqrt() + EPS)
                else:
                    kept[name][i] = code(beta2 * kept[name][i] + (1 - beta2) * grad * grad, step, i)
                    coded = m / ((kept[name][i] / (1 - beta2 ** step)).sqrt() + EPS)
                along += float((coded * exact).sum())
                norm += float((exact * exact).sum())
            projection[name] = along / norm
    m = torch.cat([opt.state[p]["exp_avg"].flatten() for p in big])
    v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in big])
    n = m.numel() // BLOCK * BLOCK
    return m[:n].view(-1, BLOCK), v[:n].view(-1, BLOCK), projection


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


def ours(x, signed, random=None):
    """fusedopt's code (fusedopt.reference.quantized), as the kernels store it
    (random: the random bytes of stochastic rounding; None: nearest)."""
    flat = x.reshape(-1)
    return quantized.dequantize(quantized.quantize(flat, signed, random), flat.shape, signed).view_as(x)


def blockwise(code):
    """A flat state coded in blocks of BLOCK by `code` (a function of the blocks)."""
    def coded(flat, *_):
        pad = (-flat.numel()) % BLOCK
        blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, BLOCK)
        return code(blocks).reshape(-1)[:flat.numel()]
    return coded


def v_codes():
    """The candidate codes of v (and, named "m: ...", of m), as kept step by step (adam_states)."""
    def random(step, tensor, n):  # the random bytes of a tensor's stochastic codes at one step
        key = low_precision.stream_key(0, tensor, step)
        return low_precision.code_random_bytes(key, torch.arange(n))

    def stochastic(flat, step, tensor):
        return ours(flat, False, random(step, tensor, flat.numel()))

    def sqrt_stochastic(flat, step, tensor):
        # E4M4 of sqrt(v / absmax) * 1.9375, 6 random bits added below the kept ones
        # (fusedopt's code for a day: unbiased sqrt(v), at a square root per element)
        def code(blocks):
            absmax = blocks.amax(1, keepdim=True)
            root = torch.where(absmax > 0, (blocks / absmax).sqrt() * 1.9375, torch.zeros_like(blocks))
            root = torch.where(root > 0, root.clamp_min(2.0 ** -18), root)
            bits = root.half().view(torch.int16).to(torch.int64)
            carry = random(step, tensor, blocks.numel()).view_as(blocks) & 0x3F
            back = (((bits + carry) >> 6).clamp(max=0xFF) << 6).to(torch.int16).view(torch.float16).float()
            return (back / 1.9375) ** 2 * absmax
        return blockwise(code)(flat)

    return {
        "dynamic tree (bitsandbytes), nearest": blockwise(lambda v: nearest(v, dynamic_tree(False))),
        "E4M4 sqrt(v), nearest": blockwise(lambda v: nearest(v.sqrt(), float_code(4, 4, False)) ** 2),
        "E3M5 sqrt(v), nearest": blockwise(lambda v: nearest(v.sqrt(), float_code(3, 5, False)) ** 2),
        "E5M3 v, nearest (fusedopt's code)": lambda flat, *_: ours(flat, False),
        "E4M4 sqrt(v), stochastic": sqrt_stochastic,
        "fusedopt: E5M3 v, stochastic": stochastic,
        "m: dynamic tree (bitsandbytes), nearest": blockwise(lambda m: nearest(m, dynamic_tree(True))),
        "m: fusedopt: E4M3, nearest": lambda flat, *_: ours(flat, True),
    }


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
        "fusedopt: E4M3 m, E5M3 v (float16 bits)": (ours(m, True), ours(v, False)),
        "linear m, linear sqrt(v)": (nearest(m, linear_signed), nearest(v.sqrt(), linear_unsigned) ** 2),
        "E3M4 m, E4M4 sqrt(v)": (nearest(m, float_code(3, 4, True)), nearest(v.sqrt(), float_code(4, 4, False)) ** 2),
        "E4M3 m, E4M4 sqrt(v)": (nearest(m, float_code(4, 3, True)), nearest(v.sqrt(), float_code(4, 4, False)) ** 2),
        "dynamic tree m, E3M5 v": (nearest(m, dynamic_tree(True)), nearest(v, float_code(3, 5, False))),
    }


def main():
    m, v, _ = adam_states()
    print(f"{m.numel()} Adam state elements in blocks of {BLOCK}")
    print(f"{'code':52} {'update rel. error':>18} {'worst element':>14} {'worst amplification':>20}")
    for name, (mq, vq) in candidates(m, v).items():
        relative, worst, amplification = measure(m, v, mq, vq)
        print(f"{name:52} {relative:18.3e} {worst:14.2f} {amplification:19.2f}x")
    # The trajectory as python -m benchmarks --train-precision runs it.
    _, _, projection = adam_states(steps=300, lr=1e-4, weight_decay=0.1, v_codes=v_codes())
    print("\nv (or m) coded every step, 300 steps at lr 1e-4: the update's projection on the exact one "
          "(1.00: unbiased)")
    for name, value in projection.items():
        print(f"{name:52} {value:18.3f}")


if __name__ == "__main__":
    main()
