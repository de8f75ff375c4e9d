from ._precision import effective_grad, math_precision


def sgd(param, grad, momentum_buffer, *, first_step, lr, weight_decay, momentum, dampening,
        nesterov, maximize):
    """SGD with momentum, dampening and Nesterov, as torch.optim.SGD:

        g = grad (+ weight_decay * param)
        b = g on the first step, else momentum * b + (1 - dampening) * g
        g = g + momentum * b (nesterov)  or  b
        param -= lr * g

    momentum_buffer is None when momentum == 0.
    """
    states = (param,) if momentum_buffer is None else (param, momentum_buffer)
    with math_precision(grad, *states) as (grad, param, *rest):
        g = effective_grad(grad, param, weight_decay, maximize)
        if momentum != 0:
            (buf,) = rest
            if first_step:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        param.add_(g, alpha=-lr)
