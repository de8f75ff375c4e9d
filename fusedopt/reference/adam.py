import math

import torch

from ._precision import effective_grad, math_precision


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1, beta2, eps,
         weight_decay, amsgrad, maximize, decoupled_weight_decay):
    """Adam (Kingma & Ba, 2015), AMSGrad (Reddi et al., 2018) and AdamW's
    decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.Adam,
    for step >= 1:

        param *= 1 - lr * weight_decay                  (decoupled)
        g = grad (+ weight_decay * param)               (coupled)
        m = lerp(m, g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g^2
        v_max = max(v_max, v); use v_max for v          (amsgrad)
        param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
    """
    states = [param, exp_avg, exp_avg_sq] + ([max_exp_avg_sq] if amsgrad else [])
    with math_precision(grad, *states) as (grad, param, exp_avg, exp_avg_sq, *rest):
        if weight_decay != 0 and decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
            g = effective_grad(grad, param, 0, maximize)
        else:
            g = effective_grad(grad, param, weight_decay, maximize)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        second_moment = exp_avg_sq
        if amsgrad:
            (max_sq,) = rest
            torch.maximum(max_sq, exp_avg_sq, out=max_sq)
            second_moment = max_sq
        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = (second_moment.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
