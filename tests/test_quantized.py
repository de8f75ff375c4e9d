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
from fusedopt.reference import low_precision, quantized as q
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


def _half_step(y, mantissa_bits):
    """Half the distance between the two codes around y >= 0 in a small float
    format whose smallest normal is 2^-14 (float16's), plus half a float16 step
    for the rounding to float16 that comes first."""
    binade = torch.floor(torch.log2(y.clamp_min(2.0 ** -14)))
    return 0.5 * (2.0 ** (binade - mantissa_bits) + 2.0 ** (binade - 10))


def test_codes_round_trip_within_half_a_step():
    """The code's definition, checked independently of how it is computed: a
    signed value comes back within half an E4M3 step of |x| / absmax * 1.875,
    a non-negative one within half an E5M3 step of x / absmax * 61440, where
    that step is 2^-3 of the value's binary order (2^-17 below 2^-14); positive
    values below E5M3's smallest code come back as that code."""
    for signed in (True, False):
        x = _values(256 * 40 + 3, 1)
        x = x if signed else x.abs()
        back = q.dequantize(q.quantize(x, signed), x.shape, signed)
        absmax = x.view(-1)[: 256 * 40].view(40, 256).abs().amax(1)
        blockwise = torch.cat([absmax.repeat_interleave(256), x[256 * 40:].abs().max().reshape(1).expand(3)])
        blockwise = blockwise.double().clamp_min(1e-300)
        top = q.SIGNED_MAX if signed else q.UNSIGNED_MAX
        y, y_back = x.abs().double() / blockwise * top, back.abs().double() / blockwise * top
        bound = _half_step(y, 3) * 1.0001 + 1e-12
        if signed:
            assert ((back == 0) | (torch.sign(back) == torch.sign(x))).all()
        else:
            smallest = q.SMALLEST_UNSIGNED
            bound = torch.where(y < smallest, torch.full_like(y, smallest), bound)
            assert torch.equal(back == 0, x == 0), "a positive value never becomes 0"
        assert ((y_back - y).abs() <= bound).all()
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


def test_stochastic_codes_are_unbiased():
    """Non-negative codes round stochastically: over the 128 carries a random
    byte's low bits take, the decoded values average to the float16 value
    exactly (a probability of rounding up equal to the dropped fraction); each
    lands on one of the two neighbouring codes."""
    block = torch.linspace(0.01, 1.0, 256) ** 4  # from 6e-4 coded: above the smallest code, 2^-17
    absmax = block.max()
    exact = (block * (q.UNSIGNED_MAX / absmax)).half().float()  # what the codes round: the float16 value
    nearest = q.decode(q.encode(block, absmax, False), absmax, False)
    total = torch.zeros(256, dtype=torch.float64)
    for carry in range(128):
        random = torch.full((256,), carry + 128 * (carry % 2), dtype=torch.int64)  # the byte's top bit doesn't count
        back = q.decode(q.encode(block, absmax, False, random), absmax, False)
        y = back * (q.UNSIGNED_MAX / absmax)
        assert ((y - exact).abs() <= _half_step(exact, 3) * 2).all()
        total += y.double()
    torch.testing.assert_close(total / 128, exact.double(), rtol=1e-6, atol=0)
    assert not torch.equal(nearest, q.decode(q.encode(block, absmax, False, torch.zeros(256, dtype=torch.int64)),
                                             absmax, False)), "a carry of 0 rounds down, unlike nearest"


def test_native_stochastic_codes_are_unbiased():
    """The native random bytes: 64 blocks of Adagrad's first sum, each with one
    large element and 255 equal values between two codes; their decoded
    values average to the exact one within 4 standard errors, and about as
    many round up as the dropped fraction says."""
    n = 256 * 64
    grad = torch.full((n,), 0.3)
    grad[::256] = 1.0
    p = torch.nn.Parameter(torch.zeros(n))
    opt = fusedopt.Adagrad([p], lr=0.1, state_dtype="8bit")
    p.grad = grad
    opt.step()
    back = q.dequantize(opt.state[p]["sum"], (n,), False)
    small = torch.ones(n, dtype=torch.bool)
    small[::256] = False
    values = back[small].double()
    exact = (torch.tensor(0.3) * torch.tensor(0.3)).double().item()
    assert values.unique().numel() == 2, "each value takes one of the two codes around it"
    low, high = values.unique().tolist()
    fraction = (exact - low) / (high - low)
    assert 0.05 < fraction < 0.95
    standard_error = (high - low) * (fraction * (1 - fraction) / values.numel()) ** 0.5
    assert abs(values.mean().item() - exact) < 4 * standard_error


def test_slow_averages_do_not_lag():
    """Why non-negative codes round stochastically. Adam's v moves by 0.1% of
    its distance a step; here a quarter of each block (|g| = 2) holds the
    absmax and the rest starts at g = 0 and gets |g| = 1 from step 50, so its
    v creeps up relative to the absmax. Rounded to nearest, each step's change
    is under half a code step and v would stop (the reference's nearest
    rounding, run beside it, ends several times too small); stochastic codes
    keep its average within 3% of float32 Adam's."""
    n = 4096
    big = torch.arange(n) % 4 == 0
    steps = 300
    p = torch.nn.Parameter(torch.zeros(n))
    opt = fusedopt.Adam([p], lr=0.0, state_dtype="8bit")
    exact = torch.zeros(n)
    nearest = torch.zeros(n)
    signs = torch.Generator().manual_seed(5)
    for step in range(steps):
        magnitude = torch.where(big, 2.0, 1.0 if step >= 50 else 0.0)
        g = magnitude * (torch.randint(0, 2, (n,), generator=signs) * 2 - 1).float()
        p.grad = g
        opt.step()
        exact = 0.999 * exact + 0.001 * g * g
        nearest = q.dequantize(q.quantize(0.999 * nearest + 0.001 * g * g, False), (n,), False)
    coded = q.dequantize(opt.state[p]["exp_avg_sq"], (n,), False)
    rest = ~big
    assert abs(coded[rest].mean() / exact[rest].mean() - 1) < 0.03
    assert nearest[rest].mean() / exact[rest].mean() < 0.5, "the case no longer shows the lag"
    torch.testing.assert_close(coded[big], exact[big], rtol=0.07, atol=0)


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
    assert torch.equal(opt2.state[p2]["sum"], q.quantize(grad * grad, signed=False, random=_random_bytes(opt2, 1)))


def _random_bytes(opt, slot, step=1):
    """The random bytes the step coded state slot `slot` of the optimizer's
    first param with (non-negative codes round stochastically)."""
    p = opt.param_groups[0]["params"][0]
    key = low_precision.stream_key(opt.param_groups[0]["seed"] & (2**63 - 1), 0, step)  # the op takes an int64
    index = low_precision.global_index(p.numel())
    return low_precision.code_random_bytes(low_precision.stream_key_of_slot(key, slot), index)


def _edge_blocks():
    """Blocks whose codes are easy to get wrong, as the grad: SGD's first
    momentum buffer holds these exact values, Adagrad's first sum their
    squares. With the block's absmax at 1.875 (E4M3's largest code) the
    momentum's coded value is the grad itself: every code value, the ties half
    way between neighbouring codes (nearest even decides) and the float32
    neighbours of both (where rounding to float16 first moves a value onto a
    tie), powers of two down to 2^-30. For the sum, the square roots of E5M3's
    code values and ties and their neighbours, under a block absmax of about
    61440 (E5M3's largest code), so the squares land at and around them. Then a
    subnormal absmax (the scale overflows to inf), an inf, a NaN, negative
    zeros, and a last block of 29 elements (16 + 8 + 5: every loop width)."""
    def marks(grid):
        ties = (grid[1:] + grid[:-1]) / 2
        values = torch.cat([grid, ties])
        return torch.cat([values, values.nextafter(torch.tensor(float("inf"))), values.nextafter(torch.tensor(0.0))])
    signed_grid = (torch.arange(128) << 7).to(torch.int16).view(torch.float16).float()
    unsigned_grid = (torch.arange(0xF8) << 7).to(torch.int16).view(torch.float16).float()
    signed_marks = torch.cat([marks(signed_grid), 2.0 ** torch.arange(-30, 1, dtype=torch.float32)])
    blocks = [_values(16 * 256, 3)]
    for part_marks, top in ((signed_marks, q.SIGNED_MAX), (marks(unsigned_grid).sqrt(), q.UNSIGNED_MAX ** 0.5)):
        part_marks = part_marks[part_marks <= top]
        for part in part_marks.split(255):
            block = torch.zeros(256)
            block[: part.numel()] = torch.where(torch.arange(part.numel()) % 2 == 0, part, -part)
            block[255] = top
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
    a value then takes the neighbouring code (at a tie, or where stochastic
    rounding's carry crosses): codes agree or differ by one step, in a few
    elements; params stay within what that one-code difference moves them."""
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
        # A one-code difference in a state moves that element's update: by up
        # to about lr where the divisor (square_avg, sum) is small, so a few
        # elements (at most 1 per tensor in 40 seeds x 10 cases) may stray that
        # far; all others agree to rounding.
        atol = 1e-4 if dtype == torch.float32 else 2e-2
        mine, ref = p.detach().float(), r.detach().float()
        excess = (mine - ref).abs() - 1e-4 * ref.abs()
        assert int((excess > atol).sum()) <= max(2, p.numel() // 1000), name
        assert float(excess.max()) <= max(atol, 2 * OPTIONS[name]["lr"]), name


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


def test_state_dicts_of_another_code_are_refused():
    """8-bit states saved under another code (the dynamic tree of fusedopt
    before 2026-11-28 saved no quantize_code) would decode to wrong values: a
    ValueError, before anything is loaded. Float states (a torch.optim state
    dict) load, are coded in this code, and save with its name."""
    base = make_params(SHAPES, torch.float32)
    opt = _run("AdamW", clone_params(base), steps=2)
    saved = opt.state_dict()
    assert saved["param_groups"][0]["quantize_code"] == "e4m3-e5m3"
    for old in (None, "dynamic-tree"):
        stale = copy.deepcopy(saved)
        if old is None:
            del stale["param_groups"][0]["quantize_code"]
        else:
            stale["param_groups"][0]["quantize_code"] = old
        fresh = fusedopt.AdamW(clone_params(base), **OPTIONS["AdamW"], state_dtype="8bit", quantize_threshold=100)
        with pytest.raises(ValueError, match=r"param_groups\[0\] holds 8-bit states in the code"):
            fresh.load_state_dict(stale)
        assert len(fresh.state) == 0 and fresh.param_groups[0]["quantize_threshold"] == 100
    theirs = clone_params(base)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01)
    for p, g in zip(theirs, gradients(theirs, 0)):
        p.grad = g
    torch_opt.step()
    ours = fusedopt.AdamW(clone_params(base), lr=0.01, state_dtype="8bit", quantize_threshold=100)
    ours.load_state_dict(torch_opt.state_dict())
    assert ours.param_groups[0]["quantize_threshold"] == 100, "a torch.optim state dict keeps our options"
    for p, g in zip(ours.param_groups[0]["params"], gradients(theirs, 1)):
        p.grad = g
    ours.step()
    again = fusedopt.AdamW(clone_params(base), lr=0.01, state_dtype="8bit")
    again.load_state_dict(ours.state_dict())
    assert again.param_groups[0]["quantize_code"] == "e4m3-e5m3"


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
