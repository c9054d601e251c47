"""Learning-rate policies (caffe.proto's formulas, SGDSolver::GetLearningRate) as pure functions of the solver
param and the iteration. `p` needs base_lr, lr_policy, gamma, power, stepsize, stepvalue and max_iter.

Where this differs from Caffe: the rate is computed in double precision (Caffe: the net's Dtype); poly gives
0 past max_iter (Caffe would raise a negative number to `power`)."""

from __future__ import annotations

import math

from netdef.errors import NetError

__all__ = ["learning_rate", "current_step"]


def _multistep(stepvalue, iteration: int) -> int:
    """Caffe's current_step_ at `iteration`: it moves at most one step per iteration, when iter >= the next
    stepvalue (so t_1 = sv[0], t_{k+1} = max(sv[k], t_k + 1))."""
    step, t = 0, -1
    for sv in stepvalue:
        t = max(sv, t + 1)
        if t > iteration:
            break
        step += 1
    return step


def current_step(p, iteration: int) -> int:
    """Caffe's current_step_: how many times the step and multistep policies have multiplied by gamma."""
    if p.lr_policy == "step":
        return iteration // p.stepsize
    if p.lr_policy == "multistep":
        return _multistep(p.stepvalue, iteration)
    return 0


def learning_rate(p, iteration: int) -> float:
    """The rate at `iteration` for the policy."""
    base, policy = p.base_lr, p.lr_policy
    if policy == "fixed":
        return base
    if policy in ("step", "multistep"):
        return base * p.gamma ** current_step(p, iteration)
    if policy == "exp":
        return base * p.gamma ** iteration
    if policy == "inv":
        return base * (1.0 + p.gamma * iteration) ** (-p.power)
    if policy == "poly":
        return base * max(0.0, 1.0 - iteration / p.max_iter) ** p.power
    if policy == "sigmoid":
        x = -p.gamma * (iteration - p.stepsize)
        return base / (1.0 + math.exp(x)) if x < 700 else 0.0
    raise NetError(f"unknown lr_policy '{policy}'")
