"""Fake (meta) kernels of the fusedopt ops, so torch.compile and FakeTensor
tracing can run a step: every op mutates its inputs and returns nothing.

They also run whenever one tensor of a call is on the meta device (the
dispatcher then picks the Meta kernel for the whole call), so they check
what the real kernels would refuse about devices: a meta grad beside CPU
params must not pass for a step that did nothing.
"""
import torch

_OPS = ("adam_", "sgd_", "adagrad_", "rmsprop_", "traffic_", "classic_sgd_", "classic_adagrad_",
        "classic_rmsprop_", "classic_adam_")
_STEP_LISTS = ("state_steps", "steps")  # CPU tensors beside params of any device (torch.optim's layout)


_FLAT = ("adam_", "sgd_", "adagrad_", "rmsprop_")  # with a `.flat` overload
# A flat state (the `.flat` overloads) is checked as a list of one tensor.
_TENSOR_ARGS = ("List[Tensor]", "Tensor", "Optional[Tensor]")


def _list_names(name):
    op, _, overload = name.partition(".")
    schema = getattr(getattr(torch.ops.fusedopt, op), overload or "default")._schema
    return [a.name for a in schema.arguments if not a.kwarg_only and str(a.type) in _TENSOR_ARGS]


def _check_devices(op, names, lists):
    params = lists[0]
    if not params:
        return
    device = params[0].device
    for list_name, tensors in zip(names, lists):
        allowed = (device, torch.device("cpu")) if list_name in _STEP_LISTS else (device,)
        for i, t in enumerate(tensors):
            if t.device not in allowed:
                raise RuntimeError(f"fusedopt.{op}: {list_name}[{i}] is on {t.device} but params[0] is on {device}; "
                                   "one call takes the tensors of one device")


def _fake(name):
    names = _list_names(name)

    def fake(*args, **kwargs):
        lists = list(args[:len(names)]) + [kwargs[n] for n in names[len(args):] if n in kwargs]
        lists = [[] if t is None else [t] if isinstance(t, torch.Tensor) else t for t in lists]
        _check_devices(name, names, lists)
        return None

    return fake


for _name in _OPS + tuple(f"{op}.flat" for op in _FLAT):
    torch.library.register_fake(f"fusedopt::{_name}")(_fake(_name))
