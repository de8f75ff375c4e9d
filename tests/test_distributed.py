"""fusedopt under torch.distributed, in real processes: FSDP2 (even and
uneven shards, clipping, AMP, bf16 mixed precision), HSDP, tensor-parallel
placements, the errors for what cannot be stepped, DCP checkpoints in every
direction and from 2 ranks to 1, DDP and ZeRO. 2 ranks on gloo over
127.0.0.1, then 1 rank; the cases are in distributed_cases.py."""
import os
import socket
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TIMEOUT_S = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world_size, cases, out, device="cpu"):
    import torch.multiprocessing as mp

    import distributed_cases
    context = mp.start_processes(distributed_cases.run, args=(world_size, _free_port(), out, cases, device),
                                 nprocs=world_size, join=False, start_method="spawn")
    end = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=max(0.0, end - time.monotonic())):
        if time.monotonic() >= end:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"distributed cases did not finish in {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import distributed_cases
    out = str(tmp_path_factory.mktemp("distributed"))
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__)] + sys.path)
    _spawn(2, list(distributed_cases.TWO_RANK_CASES), out)
    _spawn(1, list(distributed_cases.ONE_RANK_CASES), out)
    return out


@pytest.fixture(scope="module")
def nccl_results(tmp_path_factory):
    import distributed_cases
    out = str(tmp_path_factory.mktemp("nccl"))
    os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__)] + sys.path)
    _spawn(1, list(distributed_cases.NCCL_CASES), out, device="cuda")
    return out


def _cases():
    sys.path.insert(0, os.path.dirname(__file__))
    import distributed_cases
    return [(name, 2) for name in distributed_cases.TWO_RANK_CASES] + \
        [(name, 1) for name in distributed_cases.ONE_RANK_CASES]


@pytest.mark.parametrize("case,ranks", _cases(), ids=[c for c, _ in _cases()])
def test_distributed(results, case, ranks):
    for rank in range(ranks):
        path = os.path.join(results, f"{case}.rank{rank}")
        assert os.path.exists(path), f"rank {rank} did not run {case}"
        outcome = open(path).read()
        assert outcome == "ok", f"rank {rank}:\n{outcome}"


def _nccl_cases():
    sys.path.insert(0, os.path.dirname(__file__))
    import distributed_cases
    return list(distributed_cases.NCCL_CASES)


@pytest.mark.skipif(not (torch.cuda.is_available() and torch.distributed.is_nccl_available()),
                    reason="needs a GPU and NCCL")
@pytest.mark.parametrize("case", _nccl_cases())
def test_distributed_on_one_gpu_with_nccl(nccl_results, case):
    outcome = open(os.path.join(nccl_results, f"{case}.rank0")).read()
    assert outcome == "ok", outcome
