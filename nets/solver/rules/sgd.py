"""SGD with momentum (Caffe's sgd_solver.cpp ComputeUpdateValue): V = momentum * V + rate * g; W -= V."""

N_HISTORY = 1


def update(g, history, rate, iteration, hp):
    h, = history
    return h.mul_(hp.momentum).add_(g, alpha=rate)
