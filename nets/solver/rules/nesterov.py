"""Nesterov's accelerated gradient (Caffe's nesterov_solver.cpp):
V' = momentum * V + rate * g; W -= (1 + momentum) * V' - momentum * V."""

N_HISTORY = 1


def update(g, history, rate, iteration, hp):
    h, = history
    prev = h.clone()
    h.mul_(hp.momentum).add_(g, alpha=rate)
    return prev.mul_(-hp.momentum).add_(h, alpha=1.0 + hp.momentum)
