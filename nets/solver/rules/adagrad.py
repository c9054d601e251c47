"""AdaGrad (Caffe's adagrad_solver.cpp): H += g^2; W -= rate * g / (sqrt(H) + delta)."""

N_HISTORY = 1


def update(g, history, rate, iteration, hp):
    h, = history
    h.add_(g * g)
    return g.div_(h.sqrt().add_(hp.delta)).mul_(rate)
