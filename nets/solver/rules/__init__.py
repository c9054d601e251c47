"""Update rules, one file each as Caffe's src/caffe/solvers/*.cpp: `update(g, history, rate, iteration, hp)`
returns the value subtracted from the weights (Caffe's ComputeUpdateValue); it may overwrite g and updates the
param's history blobs in place. `hp` holds momentum, momentum2, delta and rms_decay (the SolverParam).

    rule = UPDATE_RULES["Adam"](solver_param)
    rule.n_history                                   # history blobs per param
    w -= rule(g, history, rate, iteration)
    updates = rule.update_many(gs, histories, rates, iteration)   # many params at once (Adam: _foreach ops)
"""

from __future__ import annotations

from nets.solver.rules import adadelta, adagrad, adam, nesterov, rmsprop, sgd

__all__ = ["UpdateRule", "UPDATE_RULES"]

_MODULES = {"SGD": sgd, "Nesterov": nesterov, "AdaGrad": adagrad, "RMSProp": rmsprop, "AdaDelta": adadelta,
            "Adam": adam}


class UpdateRule:
    """A rule bound to the solver's hyperparameters: rule(g, history, rate, iteration) -> the update."""

    def __init__(self, module, hp):
        self.update, self.n_history, self.hp = module.update, module.N_HISTORY, hp
        self._many = getattr(module, "update_many", None)

    @property
    def batched(self) -> bool:
        """Whether update_many takes all params in one call (the rule has _foreach arithmetic)."""
        return self._many is not None

    def update_many(self, gs, histories, rates, iteration: int):
        """The updates of many params: [rule(g, h, rate, iteration) for ...], in one pass where batched."""
        if self._many is not None:
            return self._many(gs, histories, rates, iteration, self.hp)
        return [self.update(g, h, rate, iteration, self.hp) for g, h, rate in zip(gs, histories, rates)]

    def __call__(self, g, history, rate: float, iteration: int):
        return self.update(g, history, rate, iteration, self.hp)


def _binder(module):
    def bind(hp) -> UpdateRule:
        return UpdateRule(module, hp)
    bind.__doc__ = module.__doc__
    return bind


UPDATE_RULES = {name: _binder(module) for name, module in _MODULES.items()}
