"""AdaDelta (Caffe's adadelta_solver.cpp): H = m H + (1 - m) g^2; u = g sqrt((U + delta) / (H + delta));
U = m U + (1 - m) u^2; W -= rate u, m = momentum. History: H for every param, then U for every param."""

N_HISTORY = 2


def update(g, history, rate, iteration, hp):
    h, hu = history
    m = hp.momentum
    h.mul_(m).add_(g * g, alpha=1.0 - m)
    u = g.mul_(((hu + hp.delta) / (h + hp.delta)).sqrt_())
    hu.mul_(m).add_(u * u, alpha=1.0 - m)
    return u.mul_(rate)
