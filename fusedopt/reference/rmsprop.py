from ._precision import effective_grad, math_precision


def rmsprop(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha, eps, weight_decay,
            momentum, centered, maximize):
    """RMSprop (Hinton), optionally centered (Graves, 2013) and with momentum,
    as torch.optim.RMSprop:

        v = alpha * v + (1 - alpha) * g^2
        c = lerp(c, g, 1 - alpha);  avg = sqrt(max(v - c^2, 0)) + eps  (centered)
                                    avg = sqrt(v) + eps           (otherwise)
        b = momentum * b + g / avg;  param -= lr * b              (momentum > 0)
        param -= lr * g / avg                                     (otherwise)

    momentum_buffer / grad_avg are None when the variant does not use them.
    """
    states = [t for t in (param, square_avg, momentum_buffer, grad_avg) if t is not None]
    with math_precision(grad, *states) as (grad, *states):
        param, square_avg = states[0], states[1]
        buf = states[2] if momentum > 0 else None
        avg_state = states[-1] if centered else None
        g = effective_grad(grad, param, weight_decay, maximize)
        square_avg.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            avg_state.lerp_(g, 1 - alpha)
            # v - c^2 is a variance: rounding can take it below 0 where it is nil.
            avg = square_avg.addcmul(avg_state, avg_state, value=-1).clamp_min_(0).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(eps)
        if buf is not None:
            buf.mul_(momentum).addcdiv_(g, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(g, avg, value=-lr)
