"""Low-precision storage (param_precision, state_dtype, stochastic_states):
the native kernels against fusedopt.reference.low_precision (bitwise where
the float32 math is the same), stochastic rounding's statistics and
reproducibility, state dicts both ways with torch.optim."""
import io
import math

import pytest
import torch

import fusedopt
from fusedopt.reference import low_precision as ref
from helpers import ALGORITHMS, clone_params, gradients, make_params, native_cpu_isas

pytestmark = pytest.mark.skipif(not fusedopt.info()["native"], reason="native extension not loaded")

OPTIONS = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
    "Adagrad": dict(lr=0.05, weight_decay=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.9, centered=True),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=0.01, weight_decay=0.1),
}
MODES = [
    dict(param_precision="stochastic"),
    dict(param_precision="compensated"),
    dict(param_precision="master"),
    dict(param_precision="master", state_dtype=torch.bfloat16, stochastic_states=True),
    dict(state_dtype=torch.bfloat16),
    dict(param_precision="stochastic", state_dtype=torch.bfloat16, stochastic_states=True),
]
SHAPES = [(1,), (7,), (33,), (31, 17), (4099,)]


def _mode_id(mode):
    return "-".join(f"{k}={getattr(v, '__name__', str(v).replace('torch.', ''))}" for k, v in mode.items())


def _ulps(a, b):
    """How many representable steps of a's dtype lie between a and b (elementwise)."""
    bits = torch.int16 if a.element_size() == 2 else torch.int32
    ai, bi = a.contiguous().view(bits).to(torch.int64), b.contiguous().view(bits).to(torch.int64)
    # Map sign-magnitude to a monotonic integer line.
    top = 1 << (8 * a.element_size() - 1)
    ai = torch.where(ai < 0, -(ai + top), ai)
    bi = torch.where(bi < 0, -(bi + top), bi)
    return (ai - bi).abs()


def assert_close_in_ulps(a, b, what, most=2, share=0.005):
    """a and b (params) equal, or a fraction `share` of elements at most `most`
    steps apart (float32 math that rounds differently in its last bit can flip
    one rounding)."""
    assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
    ulps = _ulps(a, b)
    assert int(ulps.max()) <= most, f"{what}: {int(ulps.max())} steps apart"
    assert int((ulps > 0).sum()) <= max(1, share * a.numel()), f"{what}: {int((ulps > 0).sum())} differ"


def assert_close_states(a, b, what):
    """States are sums of terms that cancel: a last-bit difference in the terms
    survives in a small result (see helpers.assert_same_state), so the
    tolerance is one step of a's precision relative to the tensor's largest
    value. Stochastic rounding of states is checked bit for bit elsewhere."""
    assert a.dtype == b.dtype, (what, a.dtype, b.dtype)
    step = 2.0**-7 if a.dtype in (torch.bfloat16, torch.float16) else 2.0**-20
    largest = b.float().abs().max().item() if b.numel() else 0.0
    torch.testing.assert_close(a.float(), b.float(), rtol=step, atol=step * max(largest, 1e-30),
                               msg=lambda m: f"{what}: {m}")


def _run(name, params, mode, steps=5, **extra):
    opt = getattr(fusedopt, name)(params, **OPTIONS[name], seed=11, **mode, **extra)
    for step in range(steps):
        for p, g in zip(params, gradients(params, step)):
            p.grad = g
        opt.step()
    return opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode", MODES, ids=[_mode_id(m) for m in MODES])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_native_matches_the_reference(name, mode, dtype):
    base = make_params(SHAPES, dtype)
    ours, theirs = clone_params(base), clone_params(base)
    native = _run(name, ours, mode)
    reference = _run(name, theirs, mode, backend="reference")
    for p, q in zip(ours, theirs):
        assert_close_in_ulps(p.detach(), q.detach(), "param")
        assert set(native.state[p]) == set(reference.state[q])
        for key, value in native.state[p].items():
            if key == "param_residual":  # the residue of a float32 value: compare what param + residual holds
                held, expected = p.detach().float() + value.float(), q.detach().float() + reference.state[q][key].float()
                torch.testing.assert_close(held, expected, rtol=2**-10, atol=2**-10 * expected.abs().max().item())
            elif key != "step":
                assert_close_states(value, reference.state[q][key], key)
        if mode.get("state_dtype") is not None:
            state = [v for k, v in native.state[p].items() if k not in ("step", "master_param", "param_residual")]
            assert all(v.dtype == mode["state_dtype"] for v in state)


@pytest.mark.parametrize("stochastic_states", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_float32_params_with_bfloat16_states(name, stochastic_states):
    base = make_params(SHAPES, torch.float32)
    ours, theirs = clone_params(base), clone_params(base)
    mode = dict(state_dtype=torch.bfloat16, stochastic_states=stochastic_states)
    native = _run(name, ours, mode)
    reference = _run(name, theirs, mode, backend="reference")
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)  # through states that may differ by a bf16 step
        for key, value in native.state[p].items():
            if key != "step":
                assert value.dtype == torch.bfloat16
                assert_close_states(value, reference.state[q][key], key)


def test_stochastic_state_rounding_is_the_references_bit_for_bit():
    """SGD's first momentum step copies the grad into the buffer: the buffer's
    stochastic rounding to bfloat16 (stream 1) sees an exact float32 value."""
    g = torch.Generator().manual_seed(8)
    param = torch.nn.Parameter(torch.randn(4096, generator=g))
    grad = torch.randn(4096, generator=g) * 0.37
    opt = fusedopt.SGD([param], lr=0.1, momentum=0.9, state_dtype=torch.bfloat16, stochastic_states=True, seed=8)
    param.grad = grad
    opt.step()
    key = ref.stream_key_of_slot(ref.stream_key(8, 0, 1), 1)
    expected = ref.round_to(grad.float(), torch.bfloat16, stochastic=True, key=key,
                            index=ref.global_index(grad.numel()))
    buffer = opt.state[param]["momentum_buffer"]
    assert torch.equal(buffer.view(torch.int16), expected.view(torch.int16))
    assert (buffer != grad.float().bfloat16()).any()


def _exact_sgd_step(dtype, param_precision, n=4096, seed=5):
    """A step whose float32 value p - g is exact, so the native rounding of it
    must equal the reference's bit for bit."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(n, generator=g) * 4).to(dtype)
    grad = (p.float() * torch.rand(n, generator=g) * 2**-6).to(dtype)  # within 2^-6 of |p|: p - g is exact
    exact = p.float() - grad.float()
    param = torch.nn.Parameter(p.clone())
    opt = fusedopt.SGD([param], lr=1.0, param_precision=param_precision, seed=seed)
    param.grad = grad
    opt.step()
    return param.detach(), exact, opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stochastic_rounding_is_the_references_bit_for_bit(dtype):
    param, exact, opt = _exact_sgd_step(dtype, "stochastic")
    key = ref.stream_key(5, 0, 1)  # seed 5, the first param, step 1
    expected = ref.round_to(exact, dtype, stochastic=True, key=key, index=ref.global_index(exact.numel()))
    assert torch.equal(param.view(torch.int16), expected.view(torch.int16))
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == 1
    assert (param.float() != exact.to(dtype).float()).any()  # not round-to-nearest in disguise


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_compensated_and_master_params_are_the_references_bit_for_bit(dtype):
    param, exact, opt = _exact_sgd_step(dtype, "compensated")
    kept, dropped = ref.split_compensated(exact, dtype)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert torch.equal(param.view(torch.int16), kept.view(torch.int16))
    assert torch.equal(state["param_residual"].view(torch.int16), dropped.view(torch.int16))
    assert (param.float() + state["param_residual"].float() - exact).abs().max() < (exact.abs() * 2**-15).max()
    param, exact, opt = _exact_sgd_step(dtype, "master")
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert torch.equal(state["master_param"], exact)
    assert torch.equal(param.view(torch.int16), exact.to(dtype).view(torch.int16))


@pytest.mark.parametrize("dtype,low,step,lr", [
    (torch.bfloat16, 1.0, 2**-10, 1.0),        # 1/8 of the way to the next bfloat16
    (torch.bfloat16, -3.0, -2**-9 * 5, 1.0),   # 5/8 of the way, negative
    (torch.float16, 1.0, 2**-13, 1.0),         # 1/8 of a float16 ulp
    (torch.float16, 0.0, 2**-16, 2**-10),      # a quarter of float16's smallest subnormal
    (torch.float16, -1000.0, -0.375, 1.0),     # 3/4 of an ulp at -1000
])
def test_stochastic_rounding_is_unbiased(dtype, low, step, lr):
    """E[round(x)] = x: the share of params rounded away from `low` is the
    fraction of the gap x covers, within 5 standard deviations of 2^18 draws."""
    n = 1 << 18
    param = torch.nn.Parameter(torch.full((n,), low, dtype=dtype))
    opt = fusedopt.SGD([param], lr=lr, param_precision="stochastic", seed=1)
    param.grad = torch.full((n,), -step, dtype=dtype)
    assert param.grad.float()[0].item() == -step  # exact in the grad's dtype
    opt.step()
    value = low + lr * step
    # The neighbour of low toward value in dtype: one step of its magnitude's bits.
    bits = torch.tensor([abs(low)], dtype=dtype).view(torch.int16)
    away = abs((bits + (1 if abs(value) > abs(low) else -1)).view(dtype).float().item())
    away = math.copysign(away, value)
    fraction = (value - low) / (away - low)
    values = set(param.detach().float().unique().tolist())
    assert values <= {low, away}, values
    up = (param.detach().float() == away).float().mean().item()
    sd = math.sqrt(fraction * (1 - fraction) / n)
    assert abs(up - fraction) < 5 * sd, (up, fraction)


def test_stochastic_rounding_keeps_small_updates_that_nearest_loses():
    """An update of 1/8 ulp every step: round-to-nearest never moves; the
    stochastic param follows the float32 path in the mean."""
    n, steps, delta = 20000, 40, 2**-11
    results = {}
    for mode in ("nearest", "stochastic"):
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = fusedopt.SGD([p], lr=1.0, param_precision=mode, seed=2)
        for _ in range(steps):
            p.grad = torch.full((n,), -delta, dtype=torch.bfloat16)
            opt.step()
        results[mode] = p.detach().float().mean().item()
    assert results["nearest"] == 1.0
    assert abs(results["stochastic"] - (1 + steps * delta)) < 0.002


def _adamw_bits(opts, threads=None, isa=None, grad_scale=None, steps=4, dtype=torch.bfloat16):
    """The bits of `dtype` params and their states after `steps` AdamW steps with
    `opts`, on `threads` threads and the CPU kernels of `isa`. A tensor of
    3 x 20001 is cut between threads at odd places."""
    prior = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if isa is not None:
        fusedopt.set_cpu_isa(isa)
    try:
        params = clone_params(make_params([(50_000,), (3, 20_001), (17,)], dtype))
        opt = fusedopt.AdamW(params, lr=1e-3, seed=4, **opts)
        if grad_scale is not None:
            opt.grad_scale = torch.tensor(grad_scale)
        for step in range(steps):
            for p, g in zip(params, gradients(params, step)):
                p.grad = g if grad_scale is None else g * grad_scale
            opt.step()
        return _bits(params, opt)
    finally:
        fusedopt.set_cpu_isa("auto")
        torch.set_num_threads(prior)


def _bits(params, opt):
    return [t.view(torch.int16 if t.element_size() == 2 else torch.int32).clone() for p in params
            for t in [p.detach()] + [v for k, v in opt.state[p].items() if k != "step"]]


def _same_for_any_thread_count_and_isa(**kwargs):
    runs = [_adamw_bits(threads=1, **kwargs), _adamw_bits(threads=2, **kwargs)]
    runs += [_adamw_bits(isa=isa, **kwargs) for isa in native_cpu_isas()]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_stochastic_rounding_is_the_same_for_any_thread_count_and_isa():
    _same_for_any_thread_count_and_isa(opts=dict(param_precision="stochastic", state_dtype=torch.bfloat16,
                                                 stochastic_states=True))


@pytest.mark.parametrize("mode", ["stochastic", "compensated"])
def test_modes_with_bfloat16_states_are_the_same_for_any_isa_and_thread_count(mode):
    """bfloat16 states rounded to nearest (the default for bfloat16 params): the
    AVX-512 and AVX2 kernels step these pieces in registers, the baseline
    through float32 buffers; the bits must not differ, AMP's grad_scale
    included."""
    _same_for_any_thread_count_and_isa(opts=dict(param_precision=mode), grad_scale=4.0)


def test_float32_params_with_bfloat16_states_are_the_same_for_any_isa_and_thread_count():
    """The AVX-512 and AVX2 kernels step float32 params with bfloat16 states
    (rounded to nearest) in registers, the baseline through float32 buffers."""
    _same_for_any_thread_count_and_isa(opts=dict(state_dtype=torch.bfloat16), grad_scale=4.0, dtype=torch.float32)


def _with_specials(n, dtype, seed):
    """n values from bfloat16's subnormals (below 1.2e-38) to 100, with NaN, +-Inf
    and +-0 scattered among them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-40, 2, n)[torch.randperm(n, generator=g)]
    at = torch.randperm(n, generator=g)[:12]
    x[at] = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-39] * 2)
    return x.to(dtype)


@pytest.mark.parametrize("algorithm", ["SGD", "AdamW", "Adagrad"])
@pytest.mark.parametrize("opts,dtype", [(dict(), torch.bfloat16), (dict(param_precision="stochastic"), torch.bfloat16),
                                        (dict(param_precision="compensated"), torch.bfloat16),
                                        (dict(state_dtype=torch.bfloat16), torch.float32)],
                         ids=["nearest", "stochastic", "compensated", "float32+bfloat16-states"])
def test_nan_inf_and_subnormals_round_alike_on_every_isa(algorithm, opts, dtype):
    """Values that AVX512_BF16's conversion rounds otherwise than round-to-nearest
    (subnormals, which it flushes; NaNs, whose payload it keeps) take the scalar
    rounding on the avx512bf16 kernels: every ISA gives the same bits, NaNs as
    c10's quiet NaN. 1001 elements: the lane loops (32 or 16 elements a turn)
    and their tails."""
    extra = dict(momentum=0.9) if algorithm == "SGD" else {}
    runs = {}
    for isa in native_cpu_isas():
        fusedopt.set_cpu_isa(isa)
        try:
            p = torch.nn.Parameter(_with_specials(1001, dtype, 0))
            opt = getattr(fusedopt, algorithm)([p], lr=1e-3, seed=3, **extra, **opts)
            for step in range(3):
                p.grad = _with_specials(1001, dtype, step + 1)
                opt.step()
            runs[isa] = _bits([p], opt)
        finally:
            fusedopt.set_cpu_isa("auto")
    first = runs["baseline"]
    assert any(t.dtype == torch.int16 and (t == 0x7FC0).any() for t in first)  # NaNs reached the 16-bit tensors
    for isa, bits in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(first, bits)), isa


def test_a_sharded_tensor_rounds_as_the_whole_one():
    """One tensor stepped whole and as two row blocks (as DTensor shards are)
    with index maps to the whole: the same bits."""
    g = torch.Generator().manual_seed(0)
    whole = torch.randn(10, 33, generator=g).bfloat16()
    grad = (torch.randn(10, 33, generator=g) * 1e-3).bfloat16()

    def step(params, grads, index_map):
        torch.ops.fusedopt.sgd_(params, grads, [], [torch.tensor(0.0) for _ in params], [], lr=1.0,
                                weight_decay=0.0, momentum=0.0, dampening=0.0, nesterov=False, maximize=False,
                                first_step=[], param_precision="stochastic", seed=9, rng_ids=[3] * len(params),
                                index_map=index_map)

    a = whole.clone()
    step([a], [grad], [])
    top, bottom = whole[:4].clone(), whole[4:].clone()
    step([top, bottom], [grad[:4].contiguous(), grad[4:].contiguous()], [0, 4 * 33, 10 * 33, 4 * 33, 6 * 33, 10 * 33])
    assert torch.equal(torch.cat([top, bottom]).view(torch.int16), a.view(torch.int16))
    left, right = whole[:, :20].contiguous(), whole[:, 20:].contiguous()  # a Shard(1) cut
    step([left, right], [grad[:, :20].contiguous(), grad[:, 20:].contiguous()], [0, 20, 33, 20, 13, 33])
    assert torch.equal(torch.cat([left, right], dim=1).view(torch.int16), a.view(torch.int16))


@pytest.mark.parametrize("mode", MODES, ids=[_mode_id(m) for m in MODES])
def test_resume_from_a_state_dict_is_bitwise(mode):
    base = make_params(SHAPES, torch.bfloat16)
    straight = clone_params(base)
    opt = _run("AdamW", straight, mode, steps=6)
    first = clone_params(base)
    opt_first = _run("AdamW", first, mode, steps=3)
    buffer = io.BytesIO()
    torch.save({"opt": opt_first.state_dict(), "params": [p.detach() for p in first]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    opt_resumed = fusedopt.AdamW(resumed, **OPTIONS["AdamW"], seed=999, **mode)  # the saved seed wins
    opt_resumed.load_state_dict(saved["opt"])
    for step in range(3, 6):
        for p, g in zip(resumed, gradients(resumed, step)):
            p.grad = g
        opt_resumed.step()
    for p, q in zip(straight, resumed):
        assert torch.equal(p.detach().view(torch.int16), q.detach().view(torch.int16))
        for key, value in opt.state[p].items():
            other = opt_resumed.state[q][key]
            assert value.dtype == other.dtype and torch.equal(value, other), key


def test_torch_state_dicts_load_both_ways():
    """A torch.optim.AdamW state dict (bf16 params and states) loads into a
    master-weight AdamW, which creates its masters from the params and keeps
    float32 states; its own state dict loads back into torch.optim (the extra
    keys ride along) and training continues."""
    base = make_params(SHAPES, torch.bfloat16)
    theirs = clone_params(base)
    torch_opt = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    for p, g in zip(theirs, gradients(theirs, 0)):
        p.grad = g
    torch_opt.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt = fusedopt.AdamW(ours, lr=0.01, param_precision="master")
    opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["param_precision"] == "master"
    for step in (1, 2):
        for p, g in zip(ours, gradients(ours, step)):
            p.grad = g
        opt.step()
    for p in ours:
        assert opt.state[p]["master_param"].dtype == torch.float32
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(p.detach(), opt.state[p]["master_param"].bfloat16())
    back = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    torch_again = torch.optim.AdamW(back, lr=0.01, foreach=False)
    torch_again.load_state_dict(opt.state_dict())
    for p, g in zip(back, gradients(back, 3)):
        p.grad = g
    torch_again.step()
    assert all(torch.isfinite(p).all() for p in back)


def test_options_are_checked_and_default_groups_stay_torchs():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="param_precision"):
        fusedopt.Adam(p, param_precision="fp8")
    with pytest.raises(ValueError, match="state_dtype"):
        fusedopt.Adam(p, state_dtype=torch.float16)
    assert set(fusedopt.Adam(p).param_groups[0]) == set(torch.optim.Adam(p).param_groups[0]) | {"decoupled_weight_decay"} \
        or set(fusedopt.Adam(p).param_groups[0]) == set(torch.optim.Adam(p).param_groups[0])
    group = fusedopt.Adam(p, param_precision="stochastic").param_groups[0]
    assert group["param_precision"] == "stochastic" and group["seed"] == torch.initial_seed()


def test_float32_params_ignore_param_precision():
    """The modes are for 16-bit params: a float32 param steps as torch's."""
    base = make_params(SHAPES, torch.float32)
    ours, theirs = clone_params(base), clone_params(base)
    a = fusedopt.AdamW(ours, lr=0.01, param_precision="master")
    b = torch.optim.AdamW(theirs, lr=0.01, foreach=False)
    for step in range(3):
        for params in (ours, theirs):
            for p, g in zip(params, gradients(params, step)):
                p.grad = g
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-6)
        assert "master_param" not in a.state[p]
