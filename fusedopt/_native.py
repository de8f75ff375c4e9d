"""Loads the native extension and decides, per device, which backend runs.

The native ops live in torch.ops.fusedopt once fusedopt._C is imported. If the
extension cannot load, or a tensor's device has no native kernel, optimizers
run the pure-PyTorch reference (fusedopt.reference) and warn once.
"""
import os
import warnings

import torch

BACKENDS = ("native", "reference")
ENV_BACKEND = "FUSEDOPT_BACKEND"

try:
    from . import _C as C  # registers torch.ops.fusedopt; holds the cached-list fast path

    LOAD_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the build
    C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

if LOAD_ERROR is None:
    from . import _ops  # noqa: F401  (fake kernels for torch.compile)

ENV_CPU_ISA = "FUSEDOPT_CPU_ISA"
CPU_ISAS = ("baseline", "avx2", "avx512", "avx512bf16")


def _check_cpu_isa_variable():
    """FUSEDOPT_CPU_ISA must name an ISA (or "auto"); one this CPU lacks runs the best it has, with a warning."""
    name = os.environ.get(ENV_CPU_ISA, "")
    if name in ("", "auto"):
        return
    if name not in CPU_ISAS:
        raise ValueError(f"{ENV_CPU_ISA}={name!r} is not one of {', '.join(CPU_ISAS)} or 'auto'")
    if LOAD_ERROR is None and name not in torch.ops.fusedopt.cpu_isas_supported().split(","):
        warnings.warn(f"{ENV_CPU_ISA}={name!r}: this CPU cannot run it; fusedopt uses "
                      f"{torch.ops.fusedopt.cpu_isa()!r}", RuntimeWarning, stacklevel=2)


ENV_CPU_HELPERS = "FUSEDOPT_CPU_HELPERS"
CPU_HELPERS = ("pool", "openmp")


def _check_cpu_helpers_variable():
    """FUSEDOPT_CPU_HELPERS must name who helps a CPU step (or "auto"): the extension reads it at every job
    and takes anything else for "auto"."""
    name = os.environ.get(ENV_CPU_HELPERS, "")
    if name not in ("", "auto") + CPU_HELPERS:
        raise ValueError(f"{ENV_CPU_HELPERS}={name!r} is not one of {', '.join(CPU_HELPERS)} or 'auto'")


_check_cpu_isa_variable()
_check_cpu_helpers_variable()

_warned = set()


def native_loaded():
    return LOAD_ERROR is None


def resolve_backend(backend):
    """The backend an optimizer asked for, or the environment's default."""
    if backend is None:
        backend = os.environ.get(ENV_BACKEND, "native") or "native"
    if backend not in BACKENDS:
        raise ValueError(f"Invalid backend: {backend!r}; expected one of {BACKENDS}")
    return backend


def has_native_kernel(op_name, device):
    """Whether torch.ops.fusedopt.<op_name> has a kernel for this device."""
    if LOAD_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{op_name}", key)


def warn_fallback(op_name, device):
    """Warns once per (op, device type) that the reference path runs instead."""
    key = (op_name, device.type)
    if key in _warned:
        return
    _warned.add(key)
    if LOAD_ERROR is not None:
        why = f"the native extension did not load ({LOAD_ERROR})"
    else:
        why = f"there is no native {op_name} kernel for {device.type} tensors"
    warnings.warn(f"fusedopt: {why}; running the pure-PyTorch reference instead", RuntimeWarning,
                  stacklevel=3)


def info():
    """What this installation runs: the native extension, its CPU instruction
    set, and whether CUDA kernels were built."""
    result = {
        "native": LOAD_ERROR is None,
        "load_error": LOAD_ERROR,
        "default_backend": resolve_backend(None),
        "cpu_isa": None,
        "cpu_isas_supported": [],
        "cuda": False,
        "torch": torch.__version__,
    }
    if LOAD_ERROR is None:
        result["cpu_isa"] = torch.ops.fusedopt.cpu_isa()
        result["cpu_isas_supported"] = torch.ops.fusedopt.cpu_isas_supported().split(",")
        result["cuda"] = torch._C._dispatch_has_kernel_for_dispatch_key("fusedopt::adam_", "CUDA")
    return result


def set_cpu_isa(name):
    """Runs the CPU kernels built for `name` ("baseline", "avx2", "avx512",
    "avx512bf16" or "auto"); for tests and benchmarks. Returns the ISA now in use."""
    if LOAD_ERROR is not None:
        raise RuntimeError(f"fusedopt: the native extension did not load ({LOAD_ERROR})")
    return torch.ops.fusedopt.set_cpu_isa(name)
