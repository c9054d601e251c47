"""Adam (Caffe's adam_solver.cpp): m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
W -= rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), t = iter + 1, b1 = momentum, b2 = momentum2
(the bias correction folded into the rate, as Caffe does). History: m for every param, then v for every param."""

import math

import torch

N_HISTORY = 2


def update(g, history, rate, iteration, hp):
    m, v = history
    b1, b2 = hp.momentum, hp.momentum2
    t = iteration + 1
    correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    m.mul_(b1).add_(g, alpha=1.0 - b1)
    v.mul_(b2).add_(g * g, alpha=1.0 - b2)
    return (m / v.sqrt().add_(hp.delta)).mul_(rate * correction)


def update_many(gs, histories, rates, iteration, hp):
    """update() for many params at once: the same operations in the same order through torch's _foreach ops
    (one call per operation instead of one per param and operation). `histories`: each param's [m, v];
    `rates`: each param's rate. Returns the updates."""
    ms, vs = [h[0] for h in histories], [h[1] for h in histories]
    b1, b2 = hp.momentum, hp.momentum2
    t = iteration + 1
    correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    torch._foreach_mul_(ms, b1)
    torch._foreach_add_(ms, gs, alpha=1.0 - b1)
    squares = torch._foreach_mul(gs, gs)
    torch._foreach_mul_(vs, b2)
    torch._foreach_add_(vs, squares, alpha=1.0 - b2)
    denominators = torch._foreach_sqrt(vs)
    torch._foreach_add_(denominators, hp.delta)
    updates = torch._foreach_div(ms, denominators)
    torch._foreach_mul_(updates, [rate * correction for rate in rates])
    return updates
