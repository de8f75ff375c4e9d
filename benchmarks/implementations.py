"""Every implementation the benchmark can compare, and which of them can run
a given case. A peer library that is not installed is reported, never an
error."""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fusedopt

TORCH_FUSED = {"SGD", "Adagrad", "Adam", "AdamW"}  # classes with fused=True in torch
TORCH_FUSED_CUDA = {"SGD", "Adam", "AdamW"}  # torch's fused Adagrad is CPU-only


@dataclass
class Implementation:
    name: str
    # make(cls_name, params, options) -> an object with .step(); None when it
    # cannot run this algorithm.
    make: Callable
    devices: tuple = ("cpu", "cuda")
    module: Optional[str] = None  # the peer library it needs
    # normwise error against float64 above which its result is marked wrong
    # (None: measure.TOLERANCE of the dtype); 8-bit states are coarser by design
    tolerance: Optional[float] = None

    def status(self, cls_name, device, dtype):
        """None if it can run the case, else why not."""
        if self.name == "torch fused" and device == "cuda" and cls_name not in TORCH_FUSED_CUDA:
            return "n/a"
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return "not installed"
        if device not in self.devices:
            return f"no {device} support"
        try:
            if self.make(cls_name, None, {}, probe_only=True) is None:
                return "n/a"
        except ImportError as exc:
            return f"import failed: {exc}"
        return None


def _fusedopt(backend, **precision):
    def make(cls_name, params, opts, probe_only=False):
        if probe_only:
            return True
        return getattr(fusedopt, cls_name)(params, **opts, backend=backend, **precision)
    return make


# fusedopt's low-precision modes (docs/precision.md): what they store beside a
# 16-bit param; on float32 params only "bf16-states" changes anything.
PRECISION_MODES = {
    "fusedopt stochastic": dict(param_precision="stochastic"),
    "fusedopt compensated": dict(param_precision="compensated"),
    "fusedopt master": dict(param_precision="master"),
    "fusedopt bf16-states": dict(state_dtype=torch.bfloat16, stochastic_states=True),
    "fusedopt sr+bf16-states": dict(param_precision="stochastic", state_dtype=torch.bfloat16,
                                    stochastic_states=True),
    "fusedopt 8-bit": dict(state_dtype="8bit"),  # docs/quantized.md
}


def _torchao_sr(cls_name, params, opts, probe_only=False):
    """torchao's AdamW with bfloat16 stochastic rounding of the params."""
    if cls_name not in ("Adam", "AdamW"):
        return None
    from torchao.optim import _AdamW
    if probe_only:
        return True
    weight_decay = opts.get("weight_decay", 0.0 if cls_name == "Adam" else 1e-2)
    return _AdamW(params, lr=opts.get("lr", 1e-3), weight_decay=weight_decay, bf16_stochastic_round=True)


def _optimi_kahan(cls_name, params, opts, probe_only=False):
    """optimi with Kahan-compensated bfloat16 params (a bfloat16 residual per param)."""
    if cls_name not in ("Adam", "AdamW", "SGD"):
        return None
    import optimi
    if probe_only:
        return True
    options = dict(opts)
    if cls_name != "SGD":
        options.setdefault("betas", (0.9, 0.999))
        options.setdefault("eps", 1e-8)
        options.setdefault("weight_decay", 0.0 if cls_name == "Adam" else 1e-2)
    return getattr(optimi, cls_name)(params, kahan_sum=True, foreach=False, **options)


def _bitsandbytes_8bit(cls_name, params, opts, probe_only=False):
    """bitsandbytes' blockwise 8-bit optimizers (its CPU kernels too)."""
    return _bitsandbytes(cls_name, params, opts, probe_only, eight_bit=True)


def _torchao_8bit(cls_name, params, opts, probe_only=False):
    """torchao's 8-bit Adam/AdamW (tensor subclass states, one call per tensor)."""
    if cls_name not in ("Adam", "AdamW"):
        return None
    import torchao.optim
    if probe_only:
        return True
    options = dict(opts)
    options.setdefault("weight_decay", 0.0 if cls_name == "Adam" else 1e-2)
    return getattr(torchao.optim, cls_name + "8bit")(params, **options)


def _torch(flavour):
    def make(cls_name, params, opts, probe_only=False):
        if flavour == "fused" and cls_name not in TORCH_FUSED:
            return None
        if probe_only:
            return True
        flags = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[flavour]
        return getattr(torch.optim, cls_name)(params, **opts, **flags)
    return make


def _adam_options(cls_name, opts):
    betas = opts.get("betas", (0.9, 0.999))
    weight_decay = opts.get("weight_decay", 1e-2 if cls_name == "AdamW" else 0.0)
    return dict(lr=opts.get("lr", 1e-3), betas=betas, eps=opts.get("eps", 1e-8), weight_decay=weight_decay)


def _deepspeed_cpu_adam(cls_name, params, opts, probe_only=False):
    if cls_name not in ("Adam", "AdamW"):
        return None
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    if probe_only:
        return True
    return DeepSpeedCPUAdam(params, adamw_mode=cls_name == "AdamW", **_adam_options(cls_name, opts))


def _deepspeed_fused_adam(cls_name, params, opts, probe_only=False):
    if cls_name not in ("Adam", "AdamW"):
        return None
    from deepspeed.ops.adam import FusedAdam
    if probe_only:
        return True
    return FusedAdam(params, adam_w_mode=cls_name == "AdamW", **_adam_options(cls_name, opts))


def _apex(cls_name, params, opts, probe_only=False):
    if cls_name not in ("Adam", "AdamW", "SGD"):
        return None
    from apex.optimizers import FusedAdam, FusedSGD
    if probe_only:
        return True
    if cls_name == "SGD":
        return FusedSGD(params, **opts)
    return FusedAdam(params, adam_w_mode=cls_name == "AdamW", **_adam_options(cls_name, opts))


def _bitsandbytes(cls_name, params, opts, probe_only=False, eight_bit=False):
    if cls_name not in ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad"):
        return None
    import bitsandbytes as bnb
    if probe_only:
        return True
    if cls_name == "SGD" and not opts.get("momentum"):
        return None  # bitsandbytes' SGD requires momentum
    if eight_bit:
        return getattr(bnb.optim, cls_name + "8bit")(params, **opts)
    return getattr(bnb.optim, cls_name)(params, optim_bits=32, **opts)


QUANTIZED_TOLERANCE = 2e-3  # a few steps through 8-bit states: about 4e-4 for each of them

IMPLEMENTATIONS = [
    Implementation("fusedopt", _fusedopt("native")),
    Implementation("fusedopt reference", _fusedopt("reference")),
    Implementation("torch for-loop", _torch("for-loop")),
    Implementation("torch foreach", _torch("foreach")),
    Implementation("torch fused", _torch("fused")),
    Implementation("deepspeed cpu-adam", _deepspeed_cpu_adam, devices=("cpu",), module="deepspeed"),
    Implementation("deepspeed fused-adam", _deepspeed_fused_adam, devices=("cuda",), module="deepspeed"),
    Implementation("apex fused", _apex, devices=("cuda",), module="apex"),
    Implementation("bitsandbytes 32-bit", _bitsandbytes, devices=("cuda",), module="bitsandbytes"),
    *[Implementation(name, _fusedopt("native", **precision), tolerance=QUANTIZED_TOLERANCE if "8-bit" in name else None)
      for name, precision in PRECISION_MODES.items()],
    Implementation("torchao sr", _torchao_sr, module="torchao"),
    Implementation("optimi kahan", _optimi_kahan, module="optimi"),
    Implementation("bitsandbytes 8-bit", _bitsandbytes_8bit, module="bitsandbytes", tolerance=QUANTIZED_TOLERANCE),
    Implementation("torchao 8-bit", _torchao_8bit, module="torchao", tolerance=QUANTIZED_TOLERANCE),
]

TORCH_IMPLEMENTATIONS = ("torch for-loop", "torch foreach", "torch fused")


# Run when --implementations is not given; the low-precision modes and their
# peers are asked for by name (with --dtype bfloat16, see docs/precision.md).
LOW_PRECISION = tuple(PRECISION_MODES) + ("torchao sr", "optimi kahan", "bitsandbytes 8-bit", "torchao 8-bit")


def by_name(names=None):
    if names is None:
        return [impl for impl in IMPLEMENTATIONS if impl.name not in LOW_PRECISION]
    known = {impl.name: impl for impl in IMPLEMENTATIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {sorted(known)}")
    return [known[n] for n in names]
