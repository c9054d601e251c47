"""Loss layers (SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss) and Accuracy.

Labels arrive as float blobs holding class ids (Caffe stores everything as float) and are truncated to
integers as Caffe's static_cast<int> does. A class id outside [0, C) that is not ignore_label is a NetError
on CPU; on other devices checking would force a device sync, so such a label makes the output NaN instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from layers.base import Layer, Param, Params, channel_axis
from layers.registry import register_layer

NORMALIZATION = ("FULL", "VALID", "BATCH_SIZE", "NONE")
LOSS_PARAM = Params("loss_param", ignore_label=Param(int), normalization=Param(NORMALIZATION, "VALID"),
                    normalize=Param(bool))


def _check_batch(layer: Layer, bottom_shapes) -> None:
    """Caffe's LossLayer::Reshape: both bottoms have the same first dim."""
    a, b = bottom_shapes[0], bottom_shapes[1]
    if not a or not b or a[0] != b[0]:
        raise layer.error(f"bottoms must have the same first dim (batch size): {a} and {b}")


def _normalization(p, default: str) -> str:
    """Caffe's rule: normalization if given, else the legacy normalize (true VALID, false BATCH_SIZE)."""
    if p.has("normalization"):
        return p.normalization
    if p.has("normalize"):
        return "VALID" if p.normalize else "BATCH_SIZE"
    return default


def _normalizer(mode: str, total: int, batch: int, valid: torch.Tensor | None):
    """Caffe's get_normalizer, at least 1 (so an all-ignored batch gives loss 0, not NaN)."""
    if mode == "VALID" and valid is not None:
        return valid.sum().clamp(min=1)
    return max(1, {"FULL": total, "VALID": total, "BATCH_SIZE": batch, "NONE": 1}[mode])


def _class_ids(layer: Layer, label: torch.Tensor, shape, num_classes: int, ignore: int | None):
    """Integer class ids reshaped to `shape`, with masks: valid (not ignored) and bad (out of range).

    Returned ids are safe to index with (bad and ignored ones replaced by 0)."""
    ids = label.detach().reshape(shape).long()  # truncates toward zero, like static_cast<int>
    valid = ids != ignore if ignore is not None else torch.ones_like(ids, dtype=torch.bool)
    bad = valid & ((ids < 0) | (ids >= num_classes))
    if ids.device.type == "cpu" and bool(bad.any()):
        value = label.detach().reshape(shape)[bad][0].item()
        raise layer.error(f"label {value:g} is out of range: class ids must be in 0..{num_classes - 1}"
                          + (f" or equal ignore_label {ignore}" if ignore is not None else ""))
    return torch.where(valid & ~bad, ids, 0), valid & ~bad, bad


def _nan_if(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """x, or NaN where any label was out of range (the non-CPU signal; no device sync)."""
    return x.masked_fill(bad.any(), math.nan)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """Multinomial logistic loss of the softmax of the scores along `axis`.

    loss = -sum_{valid i} log softmax(x)_{i, label_i} / normalizer, over every position i of the other
    axes (N*H*W labels for (N, C, H, W) scores with axis 1); positions whose label is ignore_label are
    left out. normalizer (at least 1): FULL = number of positions, VALID = number of non-ignored positions,
    BATCH_SIZE = product of the dims before `axis`, NONE = 1.
    Bottoms: scores (N, C, ...), labels (N*... class ids as floats, e.g. (N, 1, H, W) or (N, H, W)).
    Tops: loss (0-d); optional probabilities softmax(scores) (scores' shape, loss_weight 0 by default).
    Params: loss_param { ignore_label (none), normalization = VALID (FULL | VALID | BATCH_SIZE | NONE),
    normalize (deprecated; used when normalization is not given: true = VALID, false = BATCH_SIZE) },
    softmax_param { axis = 1, engine (ignored) }.
    Differs from Caffe: each term is exact log_softmax; Caffe takes log(max(p, FLT_MIN)), capping a term at
    about 87.3. No gradient flows to the labels.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> loss = make_layer('type: "SoftmaxWithLoss" bottom: "scores" bottom: "label" top: "loss"',
        ...                   bottom_shapes=[(2, 4), (2,)])
        >>> round(loss(torch.zeros(2, 4), torch.tensor([0.0, 3.0])).item(), 4)   # uniform over 4 classes: -log(1/4)
        1.3863
    """
    params = LOSS_PARAM + Params("softmax_param", engine=Param(("DEFAULT", "CAFFE", "CUDNN"), "DEFAULT"),
                                 axis=Param(int, 1))
    num_bottoms = 2
    num_tops = (1, 2)
    is_loss = True

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes
        self.axis = channel_axis(self.p.axis, len(scores), self.where, "softmax_param axis")
        self.mode = _normalization(self.p, "VALID")
        _check_batch(self, bottom_shapes)
        positions = math.prod(scores[:self.axis]) * math.prod(scores[self.axis + 1:])
        if math.prod(labels) != positions:
            raise self.error(f"scores {scores} with softmax axis {self.axis} need {positions} labels (one per "
                             f"position), but the label blob {labels} holds {math.prod(labels)}")

    def forward(self, scores, labels):
        c = scores.shape[self.axis]
        outer = math.prod(scores.shape[:self.axis])
        logp = F.log_softmax(scores, dim=self.axis).reshape(outer, c, -1)
        ids, valid, bad = _class_ids(self, labels, (outer, logp.shape[2]), c, self.p.ignore_label)
        nll = -logp.gather(1, ids.unsqueeze(1)).squeeze(1)
        total = (nll * valid).sum()
        norm = _normalizer(self.mode, ids.numel(), outer, valid if self.p.ignore_label is not None else None)
        loss = _nan_if(total / norm, bad)
        if self.num_top_blobs == 2:
            return loss, F.softmax(scores, dim=self.axis)
        return loss


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(Layer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1], computed stably from x:

    loss = sum_{valid i} [max(x_i, 0) - x_i t_i + log(1 + exp(-|x_i|))] / normalizer; an element is left
    out when int(t_i) == ignore_label. normalizer (at least 1): FULL = count, VALID = non-ignored count,
    BATCH_SIZE = N, NONE = 1. The gradient is (sigmoid(x) - t) / normalizer (0 for ignored elements).
    Bottoms: x (N, ...), targets (same count).  Tops: loss (0-d).
    Params (loss_param): ignore_label (none), normalization (when not given: BATCH_SIZE, Caffe's historical
    default for this layer; the legacy normalize true = VALID, false = BATCH_SIZE).
    No gradient flows to the targets (Caffe refuses to backpropagate to them).
    """
    params = LOSS_PARAM
    num_bottoms = 2
    is_loss = True

    def setup(self, bottom_shapes):
        x, t = bottom_shapes
        self.mode = _normalization(self.p, "BATCH_SIZE")
        _check_batch(self, bottom_shapes)
        if math.prod(x) != math.prod(t):
            raise self.error(f"inputs must have the same count: {x} has {math.prod(x)} elements, "
                             f"{t} has {math.prod(t)}")

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        per = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        ignore = self.p.ignore_label
        valid = t.long() != ignore if ignore is not None else None
        total = (per * valid).sum() if valid is not None else per.sum()
        return total / _normalizer(self.mode, x.numel(), x.shape[0], valid)


@register_layer("EuclideanLoss")
class EuclideanLoss(Layer):
    """loss = sum((a - b)^2) / (2 N), N = a.shape[0]; gradients flow to both bottoms.

    Bottoms: a (N, ...), b (N, ...) with the same count per item (shapes may differ, e.g. (N, 3) and
    (N, 3, 1, 1)).  Tops: loss (0-d).  Params: none.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> loss = make_layer('type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss"',
        ...                   bottom_shapes=[(2, 2), (2, 2)])
        >>> loss(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)).item()   # (1 + 4 + 9 + 16) / (2 * 2)
        7.5
    """
    num_bottoms = 2
    is_loss = True

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        _check_batch(self, bottom_shapes)
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.error(f"inputs must have the same dimension per item: {a} and {b}")

    def forward(self, a, b):
        d = a - b.reshape(a.shape)
        return (d * d).sum() / (2 * a.shape[0])


@register_layer("Accuracy")
class Accuracy(Layer):
    """Fraction of positions whose label is among the top_k scores along `axis` (not differentiable).

    A position counts as correct when fewer than top_k *other* classes score >= the label's score (Caffe's
    rule: ties count against the label, e.g. top_k 1 with scores [2, 2] is wrong for either label).
    Positions whose label is ignore_label are left out; with none left the accuracy is 0.
    Bottoms: scores (N, C, ...), labels (N*... class ids as floats).
    Tops: accuracy (0-d); optional per-class accuracy (C,) (0 for a class with no positions).
    Params (accuracy_param): top_k = 1, axis = 1, ignore_label (none).

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> acc = make_layer('type: "Accuracy" bottom: "scores" bottom: "label" top: "accuracy"',
        ...                  bottom_shapes=[(2, 3), (2,)])
        >>> scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])   # predicted classes 1 and 0
        >>> acc(scores, torch.tensor([1.0, 2.0])).item()                 # labels 1 (right) and 2 (wrong)
        0.5
    """
    params = Params("accuracy_param", top_k=Param(int, 1), axis=Param(int, 1), ignore_label=Param(int))
    num_bottoms = 2
    num_tops = (1, 2)

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes
        self.axis = channel_axis(self.p.axis, len(scores), self.where)
        c = scores[self.axis]
        if not 1 <= self.p.top_k <= c:
            raise self.error(f"top_k {self.p.top_k} must be between 1 and the number of classes ({c})")
        positions = math.prod(scores[:self.axis]) * math.prod(scores[self.axis + 1:])
        if math.prod(labels) != positions:
            raise self.error(f"scores {scores} with axis {self.axis} need {positions} labels (one per "
                             f"position), but the label blob {labels} holds {math.prod(labels)}")

    def forward(self, scores, labels):
        scores = scores.detach()
        c = scores.shape[self.axis]
        s = scores.reshape(math.prod(scores.shape[:self.axis]), c, -1)
        ids, valid, bad = _class_ids(self, labels, (s.shape[0], s.shape[2]), c, self.p.ignore_label)
        own = s.gather(1, ids.unsqueeze(1))
        others_ge = (s >= own).sum(1) - 1
        hit = (others_ge < self.p.top_k) & valid
        count = valid.sum()
        acc = _nan_if(torch.where(count > 0, hit.sum().to(s.dtype) / count.clamp(min=1), 0.0), bad)
        if self.num_top_blobs == 1:
            return acc
        flat_ids = ids.reshape(-1)
        per_n = s.new_zeros(c).index_add_(0, flat_ids, valid.reshape(-1).to(s.dtype))
        per_hit = s.new_zeros(c).index_add_(0, flat_ids, hit.reshape(-1).to(s.dtype))
        per_class = torch.where(per_n > 0, per_hit / per_n.clamp(min=1), 0.0)
        return acc, _nan_if(per_class, bad)
