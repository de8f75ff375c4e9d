"""Fake (meta) kernels of the fusedopt ops, so torch.compile and FakeTensor
tracing can run a step: every op mutates its inputs and returns nothing."""
import torch

_OPS = ("adam_", "sgd_", "adagrad_", "rmsprop_", "traffic_", "classic_sgd_", "classic_adagrad_",
        "classic_rmsprop_", "classic_adam_")


def _mutates_only(*args, **kwargs):
    return None


for _name in _OPS:
    torch.library.register_fake(f"fusedopt::{_name}")(_mutates_only)
