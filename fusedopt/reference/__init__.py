"""Readable pure-PyTorch implementations of every fusedopt algorithm.

Each function updates ONE parameter tensor and its state in place, written
from the algorithm's equations in the order torch.optim applies them. They
are what the tests compare the native kernels against, and the fallback
where no native kernel exists (see fusedopt.info()).

bfloat16 and float16 tensors are updated in float32 and stored back once,
which is what the fused kernels do (and torch.optim's fused kernels too).
"""
from .adagrad import adagrad
from .adam import adam
from .rmsprop import rmsprop
from .sgd import sgd

__all__ = ["adagrad", "adam", "rmsprop", "sgd"]
