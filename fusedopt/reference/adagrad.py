from ._precision import effective_grad, math_precision


def adagrad(param, grad, state_sum, *, step, lr, lr_decay, weight_decay, eps, maximize):
    """Adagrad (Duchi et al., 2011), as torch.optim.Adagrad, for step >= 1:

        clr = lr / (1 + (step - 1) * lr_decay)
        sum += g^2
        param -= clr * g / (sqrt(sum) + eps)
    """
    with math_precision(grad, param, state_sum) as (grad, param, state_sum):
        g = effective_grad(grad, param, weight_decay, maximize)
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum.addcmul_(g, g, value=1)
        std = state_sum.sqrt().add_(eps)
        param.addcdiv_(g, std, value=-clr)
