"""RMSProp (Caffe's rmsprop_solver.cpp): H = rms_decay * H + (1 - rms_decay) * g^2;
W -= rate * g / (sqrt(H) + delta)."""

N_HISTORY = 1


def update(g, history, rate, iteration, hp):
    h, = history
    h.mul_(hp.rms_decay).add_(g * g, alpha=1.0 - hp.rms_decay)
    return g.div_(h.sqrt().add_(hp.delta)).mul_(rate)
