"""Caffe's SGDSolver::ApplyUpdate once the rate is known: clip the gradients (global L2 norm over all params,
before anything else), scale them by 1/iter_size, add weight decay (L2: decay * W, L1: decay * sign(W); decay =
weight_decay * decay_mult), compute the update with the rule (rate * lr_mult) and subtract it.

Params with lr_mult 0 are skipped: their weights are unchanged, as in Caffe, and their history stays zero. A
param no gradient reached counts as a zero gradient (Caffe's zeroed diff)."""

from __future__ import annotations

import math

import torch

from nets.solver.progress import fmt

__all__ = ["apply_update"]


def apply_update(params, grads, history, rule, p, rate: float, iteration: int, log) -> None:
    """`params`: the net's ParamInfo list; `grads`: their gradients (None where none arrived); `history`: the
    rule's blobs, rule.n_history per param (all params' first blob, then all params' second...); `p`: the
    SolverParam; `log`: prints the clipping line."""
    with torch.no_grad():
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
            if norm > p.clip_gradients:
                scale = p.clip_gradients / norm
                log(f"Gradient clipping: scaling down gradients (L2 norm {fmt(norm)} > {fmt(p.clip_gradients)}) "
                    f"by scale factor {fmt(scale)}")
                for g in grads:
                    if g is not None:
                        g.mul_(scale)
        n = len(params)
        ws, gs, histories, rates = [], [], [], []
        for i, (pi, g) in enumerate(zip(params, grads)):
            if pi.lr_mult == 0:
                continue
            w = pi.tensor
            if g is None:
                g = torch.zeros_like(w)
            if p.iter_size > 1:
                g.mul_(1.0 / p.iter_size)
            decay = p.weight_decay * pi.decay_mult
            if decay:
                g.add_(w if p.regularization_type == "L2" else torch.sign(w), alpha=decay)
            ws.append(w), gs.append(g), histories.append(history[i::n]), rates.append(rate * pi.lr_mult)
        if ws:   # Adam's arithmetic in a few _foreach calls, the other rules param by param; the same numbers
            torch._foreach_sub_(ws, rule.update_many(gs, histories, rates, iteration))
