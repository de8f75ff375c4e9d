"""torch.compile of every optimizer option against the eager step, bit for bit.

    python tools/compile_sweep.py

Every option of tests/helpers.py's OPTIONS in float32, float64, bfloat16 and
float16, and the low-precision modes on bfloat16 params, each compiled with
backend="aot_eager" and fullgraph=True in op calls of 3 params (so buckets
are cut and states laid out flat per call), 3 steps beside an eager
optimizer. Too slow for the test suite (about 4 minutes on 2 cores), which
keeps one case per optimizer (tests/test_compile.py). Exit status 1 on any
mismatch, or where a compiled step left its states in lists.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import fusedopt  # noqa: E402
import fusedopt.optimizer  # noqa: E402
from helpers import (STATE_KEYS, assert_same_state, fusedopt_twins, make_params, option_cases,  # noqa: E402
                     run_steps)

SHAPES = [(7,), (33,), (5, 3), (1,), (0,), (9,), (2, 2), (6,)]
PRECISION = [dict(param_precision="master"), dict(param_precision="stochastic", seed=3),
             dict(param_precision="compensated"), dict(state_dtype="bfloat16", stochastic_states=True, seed=4)]


def runs():
    cases, _ = option_cases()
    for name, opts in cases:
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            yield name, opts, dtype
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad"):
        base = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
        for precision in PRECISION:
            yield name, dict(base, **precision), torch.bfloat16


def check(name, opts, dtype):
    """None, or what went wrong."""
    torch._dynamo.reset()
    (compiled, cparams), (eager, eparams) = fusedopt_twins(name, opts, make_params(SHAPES, dtype))
    step = torch.compile(compiled.step, backend="aot_eager", fullgraph=True)
    for i in range(3):
        run_steps(compiled, cparams, 1, start=i, step_fn=step)
        run_steps(eager, eparams, 1, start=i)
    try:
        assert_same_state(compiled, cparams, eager, eparams, STATE_KEYS[name] + ("master_param", "param_residual"),
                          0, 0)
    except AssertionError as error:
        return f"not the eager step's results: {str(error)[:300]}"
    states = [t for state in compiled.state.values() for key, t in state.items()
              if torch.is_tensor(t) and key not in ("master_param", "param_residual")]
    if states and not all(t._base is not None for t in states):
        return "states left in lists"
    return None


def main():
    fusedopt.optimizer._TRACED_CALL_PARAMS = 3
    failed = 0
    for count, (name, opts, dtype) in enumerate(runs(), 1):
        problem = check(name, opts, dtype)
        if problem:
            failed += 1
            print(f"{name} {opts} {dtype}: {problem}")
    print(f"{count} cases, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
