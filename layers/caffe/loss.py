"""Loss layers (SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss, MultinomialLogisticLoss, HingeLoss,
ContrastiveLoss, InfogainLoss) and Accuracy.

Labels arrive as float blobs holding class ids (Caffe stores everything as float) and are truncated to
integers as Caffe's static_cast<int> does. A class id outside [0, C) that is not ignore_label is a NetError
on CPU; on other devices checking would force a device sync, so such a label makes the output NaN instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from layers.base import Layer, Param, Params, channel_axis
from layers.registry import register_layer
from layers.caffe.blobproto import decode_blobproto
from netdef import protowire as pw

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


LOG_THRESHOLD = 1e-20   # Caffe's kLOG_THRESHOLD: logs are taken of max(p, 1e-20)


def _clamped_log(p: torch.Tensor) -> torch.Tensor:
    """log(max(p, 1e-20)) with Caffe's gradient 1 / max(p, 1e-20), also where p is below the threshold."""
    return torch.log(p + (p.clamp(min=LOG_THRESHOLD) - p).detach())


def _one_label_per_item(layer: Layer, labels, n: int) -> None:
    """Caffe's label checks through the legacy accessors (channels, height, width == 1): (N,) .. (N, 1, 1, 1)."""
    if len(labels) > 4 or any(d != 1 for d in labels[1:]) or (labels and labels[0] != n):
        raise layer.error(f"the label blob must hold one class id per item, shaped ({n},) up to ({n}, 1, 1, 1); "
                          f"got {labels}")


def _enum_from_1(layer: Layer, name: str) -> str:
    """The value of an enum param whose protobuf numbers start at 1 (declared with a '0' placeholder)."""
    value = getattr(layer.p, name)
    if value == "0":
        raise layer.error(f"{name} 0 is not a valid value (the numbers start at 1)")
    return value


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(Layer):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N, for probabilities p (e.g. a Softmax's top).

    Bottoms: p (N, ...), read as (N, D) with D = count / N; labels (N,) up to (N, 1, 1, 1) (class ids as
    floats, truncated).  Tops: loss (0-d).  Params: none (no ignore_label, no normalization: always / N).
    Gradient (Caffe's): -1 / (N max(p, 1e-20)) at each label's entry, 0 elsewhere; none to the labels.
    """
    num_bottoms = 2
    is_loss = True

    def setup(self, bottom_shapes):
        probs, labels = bottom_shapes
        _check_batch(self, bottom_shapes)
        _one_label_per_item(self, labels, probs[0])

    def forward(self, prob, label):
        n = prob.shape[0]
        p = prob.reshape(n, -1)
        ids, _, bad = _class_ids(self, label, (n,), p.shape[1], None)
        picked = p.gather(1, ids[:, None]).squeeze(1)
        return _nan_if(-_clamped_log(picked).sum() / n, bad)


@register_layer("HingeLoss")
class HingeLoss(Layer):
    """One-vs-all hinge loss: t[n, k] = max(0, 1 + s_nk x[n, k]) with s_nk = -1 for the label k = l_n, +1 for
    every other k; loss = sum(t) / N (norm L1) or sum(t^2) / N (norm L2).

    Bottoms: x (N, ...), read as (N, D) with D = count / N; labels (N,) up to (N, 1, 1, 1) (class ids as floats,
    truncated; in 0..D-1).  Tops: loss (0-d).
    Params (hinge_loss_param): norm = L1 (L1 = 1, L2 = 2).
    Gradient (Caffe's): L1: s_nk / N where t > 0 (0 where t == 0); L2: 2 s_nk t / N; none to the labels.
    Differs from Caffe: a label blob with more than one value per item is an error (Caffe reads the first N).
    """
    params = Params("hinge_loss_param", norm=Param(("0", "L1", "L2"), "L1"))
    num_bottoms = 2
    is_loss = True

    def setup(self, bottom_shapes):
        x, labels = bottom_shapes
        self.norm = _enum_from_1(self, "norm")
        _check_batch(self, bottom_shapes)
        _one_label_per_item(self, labels, x[0])

    def forward(self, x, label):
        n = x.shape[0]
        s = x.reshape(n, -1)
        ids, _, bad = _class_ids(self, label, (n,), s.shape[1], None)
        sign = torch.ones_like(s).scatter_(1, ids[:, None], -1.0)
        t = torch.relu(1 + sign * s)
        loss = t.sum() / n if self.norm == "L1" else (t * t).sum() / n
        return _nan_if(loss, bad)


@register_layer("ContrastiveLoss")
class ContrastiveLoss(Layer):
    """Contrastive loss of pairs (a_n, b_n) with similarity y_n (Hadsell et al. 2006), d_n = ||a_n - b_n||_2:

        loss = sum_n [ y_n d_n^2 + (1 - y_n) max(margin - d_n, 0)^2 ] / (2 N)
        legacy_version: sum_n [ y_n d_n^2 + (1 - y_n) max(margin - d_n^2, 0) ] / (2 N)

    y_n = 1 when int(similarity_n) != 0 (Caffe's static_cast<int>), else 0.
    Bottoms: a (N, C) or (N, C, 1, 1), b (same), similarity (N,) up to (N, 1, 1, 1).  Tops: loss (0-d).
    Params (contrastive_loss_param): margin = 1, legacy_version = false.
    Gradient (Caffe's): similar pairs (a - b) / N; dissimilar pairs with margin - d > 0:
    -(margin - d) (a - b) / ((d + 1e-4) N) (Caffe's 1e-4 keeps d = 0 finite), legacy: -(a - b) / N;
    the negative of it to b; none to the similarity.
    """
    params = Params("contrastive_loss_param", margin=Param(float, 1.0), legacy_version=Param(bool, False))
    num_bottoms = 3
    is_loss = True

    def setup(self, bottom_shapes):
        a, b, sim = bottom_shapes
        _check_batch(self, bottom_shapes[:2])
        for i, s in enumerate((a, b)):
            if not 2 <= len(s) <= 4 or any(d != 1 for d in s[2:]):
                raise self.error(f"bottom {i} must be (N, C) or (N, C, 1, 1), got {s}")
        if a[1] != b[1]:
            raise self.error(f"bottoms 0 and 1 must have the same channels: {a} and {b}")
        if len(sim) > 4 or any(d != 1 for d in sim[1:]) or sim[0] != a[0]:
            raise self.error(f"the similarity blob must hold one value per pair, shaped ({a[0]},) up to "
                             f"({a[0]}, 1, 1, 1); got {sim}")

    def forward(self, a, b, similarity):
        n = a.shape[0]
        diff = (a - b.reshape(a.shape)).reshape(n, -1)
        dist_sq = (diff * diff).sum(1)
        similar = similarity.detach().reshape(n).long() != 0    # static_cast<int> truncates toward zero
        margin = self.p.margin
        if self.p.legacy_version:
            mdist = margin - dist_sq
            dissimilar = torch.where(mdist > 0, mdist, torch.zeros_like(mdist))
        else:
            # value max(margin - d, 0)^2; gradient Caffe's -2 (margin - d) / (d + 1e-4) * diff, through dist_sq / 2
            d = torch.sqrt(dist_sq.detach())
            mdist = margin - d
            value = torch.where(mdist > 0, mdist * mdist, torch.zeros_like(mdist))
            coef = torch.where(mdist > 0, -2 * mdist / (d + 1e-4), torch.zeros_like(mdist))
            half = 0.5 * coef * dist_sq
            dissimilar = value + (half - half.detach())
        return torch.where(similar, dist_sq, dissimilar).sum() / n / 2


def _read_blob_proto(layer: Layer, path: str) -> torch.Tensor:
    """A serialized caffe BlobProto (.binaryproto) as a float64 tensor of its shape, as Caffe's Blob::FromProto:
    the legacy num/channels/height/width when any is set, else shape { dim }; double_data when present, else
    data (packed or not). Errors name the file."""
    try:
        with open(path, "rb") as fh:
            buf = fh.read()
    except OSError as e:
        raise layer.error(f"cannot read infogain_loss_param source '{path}': {e.strerror or e}") from None
    try:
        shape, data = decode_blobproto(buf)
    except pw.WireError as e:
        raise layer.error(f"infogain_loss_param source '{path}' is not a BlobProto (.binaryproto): {e}") from None
    if any(d < 0 for d in shape) or math.prod(shape) != len(data):
        raise layer.error(f"infogain_loss_param source '{path}': blob shape {shape} does not match its "
                          f"{len(data)} values")
    return torch.from_numpy(data.astype(np.float64)).reshape(shape)


@register_layer("InfogainLoss")
class InfogainLoss(Layer):
    """Infogain loss: the multinomial logistic loss of softmax(x) along `axis`, weighted by an infogain matrix H:

        loss = -sum_{valid i} sum_l H[label_i, l] log(max(softmax(x)_{i, l}, 1e-20)) / normalizer

    over every position i of the other axes (N*H*W for (N, C, H, W) scores with axis 1); positions whose label
    is ignore_label are left out. With H the identity it is SoftmaxWithLoss. normalizer (at least 1): FULL =
    number of positions, VALID = number of non-ignored positions, BATCH_SIZE = product of the dims before
    `axis`, NONE = 1.
    Bottoms: scores (N, C, ...), labels (one class id per position, as floats), optionally H (C*C values,
    read as C x C); without the third bottom H comes from infogain_loss_param.source.
    Tops: loss (0-d); optional softmax(scores) (scores' shape, loss_weight 0 by default; no gradient flows back
    through it, as in Caffe).
    Params: infogain_loss_param { source (a .binaryproto BlobProto file, path relative to the current folder),
    axis = 1 }, loss_param { ignore_label (none), normalization = VALID (normalize is refused, as Caffe does) }.
    Gradient (Caffe's): (softmax(x)_l * sum_m H[label, m] - H[label, l]) / normalizer, also where the 1e-20
    clamp is active; none to the labels or to H.

    Examples::

        >>> import torch
        >>> from layers.build import make_layer
        >>> loss = make_layer('type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss"',
        ...                   bottom_shapes=[(2, 3), (2,), (3, 3)])
        >>> H = torch.eye(3) * 2                     # twice the identity: twice SoftmaxWithLoss
        >>> round(loss(torch.zeros(2, 3), torch.tensor([0.0, 2.0]), H).item(), 4)   # 2 * -log(1/3)
        2.1972
    """
    params = Params("infogain_loss_param", source=Param(str), axis=Param(int, 1)) + LOSS_PARAM
    num_bottoms = (2, 3)
    num_tops = (1, 2)
    is_loss = True

    def setup(self, bottom_shapes):
        scores, labels = bottom_shapes[:2]
        if self.p.has("normalize"):
            raise self.error("loss_param normalize is deprecated for InfogainLoss (Caffe refuses it): use "
                             "normalization")
        self.mode = self.p.normalization
        self.axis = channel_axis(self.p.axis, len(scores), self.where, "infogain_loss_param axis")
        _check_batch(self, bottom_shapes)
        c = scores[self.axis]
        positions = math.prod(scores[:self.axis]) * math.prod(scores[self.axis + 1:])
        if math.prod(labels) != positions:
            raise self.error(f"scores {scores} with infogain axis {self.axis} need {positions} labels (one per "
                             f"position), but the label blob {labels} holds {math.prod(labels)}")
        if len(bottom_shapes) == 3:
            h_count = math.prod(bottom_shapes[2])
        else:
            if not self.p.source:
                raise self.error("needs the infogain matrix H: a third bottom, or infogain_loss_param { source: "
                                 "\"H.binaryproto\" }")
            h = _read_blob_proto(self, self.p.source)
            h_count = h.numel()
            self.register_buffer("infogain", h.to(torch.get_default_dtype()).reshape(-1), persistent=False)
        if h_count != c * c:
            raise self.error(f"the infogain matrix H must hold {c} x {c} = {c * c} values (classes along axis "
                             f"{self.axis} of {scores}), got {h_count}")

    def forward(self, scores, labels, infogain=None):
        c = scores.shape[self.axis]
        outer = math.prod(scores.shape[:self.axis])
        h = (self.infogain if infogain is None else infogain.detach()).to(scores.dtype).reshape(c, c)
        logp = F.log_softmax(scores, dim=self.axis)
        # Caffe's log(max(p, 1e-20)); the gradient stays log_softmax's (Caffe's p * sum(H row) - H)
        logp = logp + (logp.clamp(min=math.log(LOG_THRESHOLD)) - logp).detach()
        logp = logp.reshape(outer, c, -1)
        ids, valid, bad = _class_ids(self, labels, (outer, logp.shape[2]), c, self.p.ignore_label)
        weights = h[ids].permute(0, 2, 1)                    # (outer, C, inner): H[label_i, l]
        per = -(weights * logp).sum(1)
        total = (per * valid).sum()
        loss = _nan_if(total / _normalizer(self.mode, ids.numel(), outer, valid), bad)
        if self.num_top_blobs == 2:
            return loss, F.softmax(scores.detach(), dim=self.axis)
        return loss
