"""The CPU kernels' bfloat16/float16 loads and stores agree bit for bit with
torch's conversions: every 16-bit pattern round-trips, and sums are rounded
to nearest even exactly as torch rounds them. (The traffic op computes
s + g in float32, so it exposes the conversions alone.)"""
import pytest
import torch

import fusedopt  # noqa: F401  (registers torch.ops.fusedopt)


def _all_patterns(dtype):
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def _traffic(state, grad):
    torch.ops.fusedopt.traffic_([state], [grad], [], [], [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_bit_pattern_round_trips(cpu_isa, dtype):
    patterns = _all_patterns(dtype)
    state = patterns.clone()
    _traffic(state, torch.full_like(state, -0.0))  # x + (-0) == x, also for -0
    nan = patterns.isnan()
    assert torch.equal(state[~nan].view(torch.int16), patterns[~nan].view(torch.int16))
    if dtype == torch.bfloat16:  # c10's quiet NaN, as torch rounds a float NaN to bfloat16
        assert (state[nan].view(torch.int16) == 0x7FC0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_rounding_matches_torch(cpu_isa, dtype):
    g = torch.Generator().manual_seed(0)
    n = 1_000_003
    scales = torch.logspace(-9, 5, n)  # subnormals to overflow for float16
    a = torch.randn(n, generator=g) * scales[torch.randperm(n, generator=g)]
    b = torch.randn(n, generator=g) * scales[torch.randperm(n, generator=g)]
    a, b = a.to(dtype), b.to(dtype)
    state = a.clone()
    _traffic(state, b)
    expected = (a.float() + b.float()).to(dtype)
    assert torch.equal(state.view(torch.int16), expected.view(torch.int16))
