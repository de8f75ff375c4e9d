"""fusedopt: drop-in replacements for torch.optim whose whole update runs in
one pass over memory, in native kernels (C++ with SIMD and threads on the CPU).

    import fusedopt
    opt = fusedopt.Adam(model.parameters(), lr=1e-3)

fusedopt.reference holds a readable pure-PyTorch version of every algorithm;
fusedopt.info() tells what this installation runs.
"""
from . import classic, reference
from ._native import info, set_cpu_isa
from ._precision import dequantized_state_dict
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .rmsprop import RMSprop
from .sgd import SGD

__version__ = "0.1.0"

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "classic", "dequantized_state_dict", "info", "reference",
           "set_cpu_isa"]
