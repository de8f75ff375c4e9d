"""Blockwise 8-bit states (state_dtype="8bit", docs/quantized.md): the
quantizer's own properties, the native kernels against
fusedopt.reference.quantized (bit for bit where the float32 values being coded
are the same), multi-step agreement with the reference step, exact zeros,
bytes per param, state dicts both ways with torch.optim, and the errors."""
import copy
import io

import pytest
import torch

import fusedopt
from fusedopt.reference import quantized as q
from helpers import ALGORITHMS, clone_params, gradients, make_params, native_cpu_isas

pytestmark = pytest.mark.skipif(not fusedopt.info()["native"], reason="native extension not loaded")

OPTIONS = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "Adagrad": dict(lr=0.05, weight_decay=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.9),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=0.01, weight_decay=0.1),
}
SHAPES = [(5000,), (70, 129), (300,), (4096 + 256 * 3 + 17,)]  # the 300 stays float32 under the 4096 threshold


def _values(n, seed):
    """Values over many decades, with exact zeros and a whole block of zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 4)
    x[::11] = 0.0
    x[256:512] = 0.0
    return x


def test_codes_round_trip_within_half_a_step():
    """Decoding gives the midpoint of the code's interval: the error of a value
    is at most half its decade's step (relative to the block's absmax)."""
    for signed in (True, False):
        x = _values(256 * 40 + 3, 1)
        x = x if signed else x.abs()
        back = q.dequantize(q.quantize(x, signed), x.shape, signed)
        absmax = x.view(-1)[: 256 * 40].view(40, 256).abs().amax(1)
        blockwise = torch.cat([absmax.repeat_interleave(256), x[256 * 40:].abs().max().reshape(1).expand(3)])
        decades, vmax = (7, q.SIGNED[5]) if signed else (8, q.UNSIGNED[5])
        scale = blockwise.clamp_min(1e-30) / vmax  # a code's unit: the block's absmax maps to vmax
        y = x.abs() / scale
        decade = torch.floor(torch.log10(y.clamp_min(1e-30))).clamp(-decades, -1) + decades
        step = 9 * 10.0 ** (decade - decades) / 2.0 ** decade  # the step of the decade holding y
        # below the lowest decade: 0 (signed) or the smallest code, 5.5 10^-D (unsigned)
        bound = torch.where(y >= 10.0 ** -decades, step * 0.5 * 1.001, 5.5 * 10.0 ** -decades) * scale
        assert ((back - x).abs() <= bound + 1e-30).all()
        assert torch.equal(back == 0, x == 0) if not signed else ((x == 0) <= (back == 0)).all()
        assert (back[x == 0] == 0).all()


def test_codes_are_monotone_and_keep_signs():
    x = torch.linspace(-1, 1, 256)
    signed = q.dequantize(q.quantize(x, True), x.shape, True)
    assert (signed[1:] >= signed[:-1]).all()
    assert ((signed > 0) <= (x > 0)).all() and ((signed < 0) <= (x < 0)).all()
    y = torch.linspace(0, 1, 256) ** 8
    unsigned = q.dequantize(q.quantize(y, False), y.shape, False)
    assert (unsigned[1:] >= unsigned[:-1]).all()
    assert (unsigned[1:] > 0).all(), "a positive second moment never becomes 0"


def test_first_steps_code_exactly_as_the_reference(cpu_isa):
    """SGD's first momentum buffer is the grad and Adagrad's first sum is g*g
    (initial value 0): exact float32 values, so the native codes and absmaxes
    are the reference's, bit for bit, on every instruction set."""
    _assert_first_states_code_as_the_reference(_values(256 * 19 + 100, 2))


def _assert_first_states_code_as_the_reference(grad):
    """One step of SGD (momentum buffer = grad, signed) and Adagrad (sum =
    grad * grad, non-negative) from zero state: their 8-bit states, codes and
    absmaxes, equal the reference's quantize of those exact values."""
    p = torch.nn.Parameter(torch.zeros_like(grad))
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9, state_dtype="8bit")
    p.grad = grad.clone()
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], q.quantize(grad, signed=True))
    p2 = torch.nn.Parameter(torch.zeros_like(grad))
    opt2 = fusedopt.Adagrad([p2], lr=0.1, state_dtype="8bit")
    p2.grad = grad.clone()
    opt2.step()
    assert torch.equal(opt2.state[p2]["sum"], q.quantize(grad * grad, signed=False))


def _edge_blocks():
    """Blocks whose codes are easy to get wrong: with absmax = vmax (so the
    coded magnitude is |x| itself) the decades' low ends, every power of two
    the coder meets and their float32 neighbours; a subnormal absmax (vmax /
    absmax overflows to inf), an inf, a NaN, negative zeros; and a last block
    of 29 elements (16 + 8 + 5: every loop width). As the grad: SGD's first
    momentum buffer holds these exact values, Adagrad's first sum their
    squares."""
    low = torch.cat([q.SIGNED[0], q.UNSIGNED[0]])
    powers = 2.0 ** torch.arange(-30, 5, dtype=torch.float32)
    marks = torch.cat([low, powers, low.sqrt(), powers.sqrt()])
    up, down = marks.nextafter(torch.tensor(float("inf"))), marks.nextafter(torch.tensor(0.0))
    edges = torch.cat([marks, up, down])
    blocks = [_values(16 * 256, 3)]
    for vmax in (q.SIGNED[5], q.UNSIGNED[5], q.UNSIGNED[5].sqrt()):
        for part in edges.split(255):
            block = torch.zeros(256)
            block[: part.numel()] = torch.where(torch.arange(part.numel()) % 2 == 0, part, -part)
            block[255] = vmax
            blocks.append(block)
    special = torch.linspace(-1, 1, 256)
    blocks.append(special * 1e-40)  # subnormal absmax
    blocks.append(torch.where(torch.arange(256) == 7, torch.tensor(float("inf")), special))
    blocks.append(torch.where(torch.arange(256) == 9, torch.tensor(float("nan")), special))
    blocks.append(torch.full((256,), -0.0))
    blocks.append(special[:29] * 3.0)
    return torch.cat(blocks)


def test_edge_values_code_exactly_as_the_reference(cpu_isa):
    grad = _edge_blocks()
    assert grad.numel() > 4096  # above the threshold: coded
    _assert_first_states_code_as_the_reference(grad)


def _run(name, params, steps=5, **extra):
    opt = getattr(fusedopt, name)(params, **OPTIONS[name], state_dtype="8bit", **extra)
    for step in range(steps):
        for p, g in zip(params, gradients(params, step)):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ALGORITHMS)
def test_native_matches_the_reference(name, dtype):
    """Five steps against the reference step. The update's float32 math may
    round its last bit differently from the reference's (torch's op order), and
    a value on an interval's edge then takes the neighbouring code: codes agree
    or differ by one step, in a few elements; params stay within what that
    one-code difference moves them."""
    base = make_params(SHAPES, dtype)
    ours, theirs = clone_params(base), clone_params(base)
    native = _run(name, ours)
    reference = _run(name, theirs, backend="reference")
    for p, r in zip(ours, theirs):
        assert set(native.state[p]) == set(reference.state[r])
        for key, value in native.state[p].items():
            other = reference.state[r][key]
            assert value.dtype == other.dtype and value.shape == other.shape, key
            if key == "step":
                continue
            if value.dtype == torch.uint8:
                assert p.numel() >= 4096
                codes, theirs_codes = value[: q.blocks(p.numel()) * q.BLOCK], other[: q.blocks(p.numel()) * q.BLOCK]
                magnitude = (codes.to(torch.int16) & 0x7F) if key not in native._unsigned_states else codes.to(torch.int16)
                magnitude_ref = (theirs_codes.to(torch.int16) & 0x7F) if key not in native._unsigned_states \
                    else theirs_codes.to(torch.int16)
                differ = codes != theirs_codes
                assert int(differ.sum()) <= max(2, 0.01 * codes.numel()), (key, int(differ.sum()))
                assert int((magnitude - magnitude_ref).abs().max()) <= 1, key
                absmax = value[q.blocks(p.numel()) * q.BLOCK:].view(torch.float32)
                absmax_ref = other[q.blocks(p.numel()) * q.BLOCK:].view(torch.float32)
                torch.testing.assert_close(absmax, absmax_ref, rtol=1e-5, atol=0)
            else:
                assert p.numel() < 4096
                torch.testing.assert_close(value.float(), other.float(), rtol=1e-5, atol=1e-6)
        atol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(p.detach().float(), r.detach().float(), rtol=1e-4, atol=atol)


def test_bitwise_for_any_thread_count_and_isa():
    def run(threads, isa):
        prior = torch.get_num_threads()
        torch.set_num_threads(threads)
        fusedopt.set_cpu_isa(isa)
        try:
            params = clone_params(make_params(SHAPES, torch.float32))
            opt = _run("AdamW", params, steps=3)
            return [p.detach() for p in params] + [v for p in params for v in opt.state[p].values()]
        finally:
            fusedopt.set_cpu_isa("auto")
            torch.set_num_threads(prior)
    first = run(1, native_cpu_isas()[0])
    for threads in (1, 2):
        for isa in native_cpu_isas():
            assert all(torch.equal(a, b) for a, b in zip(first, run(threads, isa))), (threads, isa)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_params_without_gradient_never_drift(name):
    """Weight decay 0 and a gradient that is always zero: every state stays an
    exact 0 (code 0), so the param never moves, unlike a quantizer that codes
    0 as a small nonzero value."""
    options = dict(OPTIONS[name], weight_decay=0.0)
    p = torch.nn.Parameter(torch.randn(8192))
    start = p.detach().clone()
    other = torch.nn.Parameter(torch.randn(8192))
    opt = getattr(fusedopt, name)([p, other], **options, state_dtype="8bit")
    for step in range(20):
        p.grad = torch.zeros_like(p)
        p.grad[:256] = torch.randn(256) if step % 2 == 0 else 0.0  # another block of it does move
        other.grad = torch.randn_like(other)
        opt.step()
    assert torch.equal(p.detach()[256:], start[256:])
    assert not torch.equal(p.detach()[:256], start[:256])


def test_state_bytes_per_param():
    n = 1 << 20
    p = torch.nn.Parameter(torch.randn(n))
    opt = fusedopt.AdamW([p], state_dtype="8bit")
    p.grad = torch.randn(n)
    opt.step()
    state_bytes = sum(v.numel() * v.element_size() for k, v in opt.state[p].items() if k != "step")
    assert state_bytes / n == pytest.approx(2 * 260 / 256)  # 2.03: codes and a float32 absmax per 256
    assert state_bytes / n <= 2.1


def test_threshold_keeps_small_tensors_unquantized():
    small, big = torch.nn.Parameter(torch.randn(100)), torch.nn.Parameter(torch.randn(200))
    opt = fusedopt.Adam([small, big], state_dtype="8bit", quantize_threshold=150)
    for p in (small, big):
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[small]["exp_avg"].dtype == torch.float32
    assert opt.state[big]["exp_avg"].dtype == torch.uint8
    assert opt.param_groups[0]["quantize_threshold"] == 150


def test_save_and_load_resume_bitwise():
    base = make_params(SHAPES, torch.float32)
    a, b = clone_params(base), clone_params(base)
    first = _run("AdamW", a, steps=6)
    second = _run("AdamW", b, steps=3)
    buffer = io.BytesIO()
    torch.save(second.state_dict(), buffer)
    buffer.seek(0)
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    resumed = fusedopt.AdamW(c, **OPTIONS["AdamW"], state_dtype="8bit")
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(3, 6):
        for p, g in zip(c, gradients(c, step)):
            p.grad = g
        resumed.step()
    for p, r in zip(a, c):
        assert torch.equal(p, r)
        for key, value in first.state[p].items():
            assert torch.equal(value, resumed.state[r][key]), key


def test_torch_state_dicts_both_ways():
    """torch.optim -> 8-bit: the float states of a loaded state dict are
    quantized at the next step. 8-bit -> torch.optim: dequantized_state_dict
    gives float32 states of the params' shapes."""
    base = make_params(SHAPES, torch.float32)
    theirs = clone_params(base)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    for p, g in zip(theirs, gradients(theirs, 0)):
        p.grad = g
    torch_opt.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt = fusedopt.AdamW(ours, lr=0.01, state_dtype="8bit")
    opt.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # torch's load keeps the step tensors it is given
    grads = gradients(ours, 1)
    for p, g in zip(ours, grads):
        p.grad = g
    opt.step()
    for p, g in zip(theirs, grads):
        p.grad = g
    torch_opt.step()
    for p, r in zip(ours, theirs):
        assert (opt.state[p]["exp_avg"].dtype == torch.uint8) == (p.numel() >= 4096)
        # One step through 8-bit states moves a param by lr at most; a fresh
        # state (the loaded one ignored) would move it by about lr everywhere.
        difference = (p - r).abs()
        assert difference.max() <= 0.3 * 0.01 and difference.mean() <= 0.02 * 0.01, (difference.max(), difference.mean())
    state = fusedopt.dequantized_state_dict(opt)
    for index, p in enumerate(ours):
        for key in ("exp_avg", "exp_avg_sq"):
            value = state["state"][index][key]
            assert value.dtype == torch.float32 and value.shape == p.shape
            torch.testing.assert_close(value, torch_opt.state[theirs[index]][key], rtol=0.05,
                                       atol=0.05 * torch_opt.state[theirs[index]][key].abs().max().item())
    back = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    torch_again = torch.optim.AdamW(back, lr=0.01, foreach=False)
    torch_again.load_state_dict(state)
    for p, g in zip(back, gradients(back, 2)):
        p.grad = g
    torch_again.step()
    assert all(torch.isfinite(p).all() for p in back)


def test_options_are_checked():
    p = [torch.nn.Parameter(torch.zeros(5000))]
    with pytest.raises(ValueError, match="quantize_threshold"):
        fusedopt.Adam(p, quantize_threshold=10)  # only with 8-bit states
    with pytest.raises(ValueError, match="quantize_threshold"):
        fusedopt.Adam(p, state_dtype="8bit", quantize_threshold=-1)
    with pytest.raises(ValueError, match="state_dtype"):
        fusedopt.Adam(p, state_dtype="4bit")
    opt = fusedopt.Adam(p, state_dtype=torch.uint8)
    assert opt.param_groups[0]["state_dtype"] == "8bit"


def test_float64_params_keep_their_states():
    p = torch.nn.Parameter(torch.randn(5000, dtype=torch.float64))
    opt = fusedopt.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float64
