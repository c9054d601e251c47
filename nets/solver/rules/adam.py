"""Adam (Caffe's adam_solver.cpp): m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
W -= rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), t = iter + 1, b1 = momentum, b2 = momentum2
(the bias correction folded into the rate, as Caffe does). History: m for every param, then v for every param."""

import math

N_HISTORY = 2


def update(g, history, rate, iteration, hp):
    m, v = history
    b1, b2 = hp.momentum, hp.momentum2
    t = iteration + 1
    correction = math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    m.mul_(b1).add_(g, alpha=1.0 - b1)
    v.mul_(b2).add_(g * g, alpha=1.0 - b2)
    return (m / v.sqrt().add_(hp.delta)).mul_(rate * correction)
