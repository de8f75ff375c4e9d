"""The seed document's layer-level rules, written from its equations, for one
weight tensor; g = dw + lambdaa * dr in every rule. Each updates `w` and its
state in place (bfloat16/float16 through float32, like the kernels)."""
from ._precision import math_precision


def _grad(dw, dr, lambdaa):
    return dw if dr is None else dw + lambdaa * dr


def sgd(w, dw, dr, velocity, *, alpha, lambdaa, epsilon, nesterov):
    """w -= alpha g;  with momentum v = eps v - alpha g, w += v;  Nesterov
    (gradient at w): v = eps v - alpha g, w += eps v - alpha g."""
    states = (w,) if velocity is None else (w, velocity)
    extra = () if dr is None else (dr,)
    with math_precision(dw, *extra, *states, inputs=1 + len(extra)) as (dw, *rest):
        dr = rest.pop(0) if extra else None
        w = rest[0]
        g = _grad(dw, dr, lambdaa)
        if velocity is None:
            w.add_(g, alpha=-alpha)
            return
        v = rest[1]
        v.mul_(epsilon).add_(g, alpha=-alpha)
        if nesterov:
            w.add_(v * epsilon - alpha * g)
        else:
            w.add_(v)


def adagrad(w, dw, dr, r, *, alpha, lambdaa, delta):
    """r += g^2;  w -= alpha g / (delta + sqrt(r))."""
    extra = () if dr is None else (dr,)
    with math_precision(dw, *extra, w, r, inputs=1 + len(extra)) as (dw, *rest):
        dr = rest.pop(0) if extra else None
        w, r = rest
        g = _grad(dw, dr, lambdaa)
        r.add_(g * g)
        w.sub_(alpha * g / (delta + r.sqrt()))


def rmsprop(w, dw, dr, r, velocity, *, alpha, lambdaa, rho, delta, epsilon):
    """r = rho r + (1 - rho) g^2;  w -= alpha g / sqrt(delta + r);  with momentum
    v = eps v - alpha g / sqrt(delta + r), w += v."""
    states = (w, r) if velocity is None else (w, r, velocity)
    extra = () if dr is None else (dr,)
    with math_precision(dw, *extra, *states, inputs=1 + len(extra)) as (dw, *rest):
        dr = rest.pop(0) if extra else None
        w, r = rest[0], rest[1]
        g = _grad(dw, dr, lambdaa)
        r.mul_(rho).add_((1 - rho) * g * g)
        step = g / (delta + r).sqrt()
        if velocity is None:
            w.sub_(alpha * step)
        else:
            v = rest[2]
            v.mul_(epsilon).sub_(alpha * step)
            w.add_(v)


def adam(w, dw, dr, s, r, *, t, alpha, lambdaa, rho1, rho2, delta):
    """s = rho1 s + (1 - rho1) g;  r = rho2 r + (1 - rho2) g^2;
    w -= alpha (s / (1 - rho1^t)) / (sqrt(r / (1 - rho2^t)) + delta)."""
    extra = () if dr is None else (dr,)
    with math_precision(dw, *extra, w, s, r, inputs=1 + len(extra)) as (dw, *rest):
        dr = rest.pop(0) if extra else None
        w, s, r = rest
        g = _grad(dw, dr, lambdaa)
        s.mul_(rho1).add_((1 - rho1) * g)
        r.mul_(rho2).add_((1 - rho2) * g * g)
        s_hat = s / (1 - rho1**t)
        r_hat = r / (1 - rho2**t)
        w.sub_(alpha * s_hat / (r_hat.sqrt() + delta))
