r"""IS-SGD, piece 1 of 4: how samples are scored.

The score of sample :math:`i` is the norm of the gradient of its loss with respect to its
logits :math:`z_i`, an upper bound (up to a constant) of the norm of its gradient with respect
to the parameters (Katharopoulos & Fleuret, 2018):

.. math::

    g_i = \left\| \frac{\partial L_i}{\partial z_i} \right\|_2 ,

which for softmax cross-entropy has the closed form
:math:`g_i = \| \mathrm{softmax}(z_i) - \mathrm{onehot}(y_i) \|_2`. Other losses get their
scores by automatic differentiation with respect to the logits; ``score="loss"`` uses the
per-sample losses themselves.

:func:`gradient_norm_scores` scores given logits; :func:`score_samples` runs the model to get
them: in eval mode (no dropout, no BatchNorm statistics update), under
:func:`torch.inference_mode` (or :func:`torch.no_grad`), optionally under
:func:`torch.autocast`, in chunks, on the device the inputs are on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optuna_isbo.issgd.checks import (
    IGNORE_INDEX,
    batch_rows,
    check_cross_entropy,
    check_logits,
    check_per_sample,
    check_target_rows,
    index_rows,
    tensor_leaves,
)

__all__ = ["IGNORE_INDEX", "LossFn", "gradient_norm_scores", "per_sample_loss", "score_samples"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, targets) -> per-sample losses`` of shape ``(n,)``."""

Score = Literal["gnorm", "loss"]


def _cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    if not targets.dtype.is_floating_point:
        targets = targets.long()
    return F.cross_entropy(logits, targets, reduction="none", ignore_index=ignore_index)


def _closed_form_scores(logits: Tensor, targets: Tensor, ignore_index: int) -> Tensor:
    """``||softmax(z_i) - y_i||_2`` for checked ``(n, C)`` logits; 0 for ignored targets."""
    z = logits.detach().float()
    residual = torch.softmax(z, dim=1)
    if targets.dtype.is_floating_point:
        return torch.linalg.vector_norm(residual - targets.detach().float(), dim=1)
    targets = targets.detach().long()
    ignored = targets == ignore_index
    classes = torch.where(ignored, 0, targets)
    residual[torch.arange(len(z), device=z.device), classes] -= 1.0
    # torch.where, not residual[ignored] = 0: a boolean mask would wait for the device
    residual = torch.where(ignored[:, None], 0.0, residual)
    return torch.linalg.vector_norm(residual, dim=1)


def check_outputs(
    logits: object,
    targets: Tensor,
    loss_fn: LossFn | None,
    ignore_index: int,
    check_range: bool = True,
) -> Tensor:
    """The checked logits: one row per target; ``(n, C)`` fit for cross-entropy if no loss_fn.

    ``check_range=False`` skips the class-range check of the targets (a host synchronization
    on an accelerator).
    """
    checked = check_logits(logits, targets)
    if loss_fn is None:
        check_cross_entropy(checked, targets, ignore_index, check_range)
    return checked


def per_sample_loss(
    logits: Tensor,
    targets: Tensor,
    loss_fn: LossFn | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    check_range: bool = True,
) -> Tensor:
    """Per-sample losses, shape ``(n,)``: ``loss_fn(logits, targets)`` or cross-entropy.

    Parameters
    ----------
    logits
        Shape ``(n, C)`` for cross-entropy, ``(n, ...)`` for a custom ``loss_fn``.
    targets
        Shape ``(n,)`` class indices or ``(n, C)`` class probabilities for cross-entropy.
    loss_fn
        ``None`` for softmax cross-entropy with ``ignore_index``; ignored samples have loss 0.
    ignore_index
        Cross-entropy only; see :func:`gradient_norm_scores`.
    check_range
        Whether to check that class indices lie in ``[0, C)`` (a host synchronization on an
        accelerator).

    Raises
    ------
    ValueError
        If the shapes do not fit, or ``loss_fn`` does not return shape ``(n,)``.
    """
    check_outputs(logits, targets, loss_fn, ignore_index, check_range)
    if loss_fn is None:
        return _cross_entropy(logits, targets, ignore_index)
    return check_per_sample(loss_fn(logits, targets), len(logits))


def gradient_norm_scores(
    logits: Tensor,
    targets: Tensor,
    loss_fn: LossFn | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Per-sample norms of the loss gradient with respect to the logits.

    Parameters
    ----------
    logits
        Shape ``(n, C)`` for cross-entropy; ``(n, ...)`` for a custom ``loss_fn`` (``(n,)``
        for one logit per sample). Cast to float32 first, so the scores are float32 even when
        the logits come from an autocast region.
    targets
        For cross-entropy, shape ``(n,)`` integer class indices in ``[0, C)`` (or equal to
        ``ignore_index``), or ``(n, C)`` floating class probabilities; any shape with ``n``
        rows that ``loss_fn`` accepts otherwise.
    loss_fn
        ``None`` for softmax cross-entropy, scored in closed form
        ``||softmax(z_i) - onehot(y_i)||_2``. Otherwise a per-sample loss whose ``i``-th output
        depends on row ``i`` of the logits only; the scores are then the row norms of the
        gradient of ``sum_i L_i`` with respect to the logits (one backward for all rows).
    ignore_index
        Cross-entropy only: class-index targets equal to it are ignored, as by
        :func:`torch.nn.functional.cross_entropy` (default -100). Their loss is constant, so
        their score is 0.

    Returns
    -------
    Tensor
        Shape ``(n,)``, float32, detached, on the logits' device.

    Raises
    ------
    ValueError
        If the shapes do not fit (the message names them), or a class index lies outside
        ``[0, C)`` and is not ``ignore_index``.
    """
    check_outputs(logits, targets, loss_fn, ignore_index)
    return _scores(logits, targets, loss_fn, "gnorm", ignore_index)


def _scores(
    logits: Tensor, targets: Tensor, loss_fn: LossFn | None, score: Score, ignore_index: int
) -> Tensor:
    """Scores of checked logits; works on inference tensors (outside inference mode)."""
    if score == "loss":
        with torch.no_grad():
            losses = per_sample_loss(
                logits.detach().float(),
                targets,
                loss_fn,
                ignore_index=ignore_index,
                check_range=False,
            )
        return losses.detach().float()
    if loss_fn is None:
        return _closed_form_scores(logits, targets, ignore_index)
    # clone(): an inference tensor cannot take part in autograd, its clone can
    z = logits.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        losses = check_per_sample(loss_fn(z, targets), len(z))
        (grad,) = torch.autograd.grad(losses.sum(), z)
    return torch.linalg.vector_norm(grad.reshape(len(grad), -1), dim=1)


def scores_from_logits(
    logits: Tensor,
    targets: Tensor,
    loss_fn: LossFn | None = None,
    *,
    score: Score = "gnorm",
    ignore_index: int = IGNORE_INDEX,
    losses: Tensor | None = None,
) -> Tensor:
    """Scores of checked logits, shape ``(n,)`` float32; ``losses`` reused for ``"loss"``."""
    if score == "loss" and losses is not None:
        return check_per_sample(losses, len(logits)).detach().float()
    return _scores(logits, targets, loss_fn, score, ignore_index)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _device_of(inputs: Any) -> torch.device:
    leaves = tensor_leaves(inputs)
    return leaves[0].device if leaves else torch.device("cpu")


def score_samples(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    loss_fn: LossFn | None = None,
    *,
    score: Score = "gnorm",
    ignore_index: int = IGNORE_INDEX,
    forward_batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    inference_mode: bool = True,
    check_range: bool = True,
) -> Tensor:
    """Score samples with ``model``: eval mode, no gradient, in chunks, on the inputs' device.

    Every submodule's train/eval mode is restored afterwards, so BatchNorm running statistics
    do not move and dropout is off while scoring.

    Parameters
    ----------
    model
        Returns logits ``(n, C)`` (``(n, ...)`` for a custom ``loss_fn``) for ``inputs``.
    inputs
        Shape ``(n, ...)``, or a list, tuple or dict of such tensors (passed to the model as
        they are), on the model's device.
    targets
        Shape ``(n, ...)`` on the same device.
    loss_fn, score, ignore_index
        As for :func:`gradient_norm_scores`; ``score="loss"`` scores by the per-sample loss.
    forward_batch_size
        Samples per forward pass; ``None`` for all at once.
    autocast_dtype
        If given (``torch.bfloat16``, ``torch.float16``), the forward passes run under
        ``torch.autocast(device_type, dtype=autocast_dtype)``; the scores are float32 anyway.
        ``None`` leaves any autocast region of the caller in force.
    inference_mode
        ``True`` (default): forward passes under :func:`torch.inference_mode`, the cheapest
        no-gradient mode. ``False``: under :func:`torch.no_grad`, for models that cache
        tensors from their forward pass for later training (an inference tensor cannot be
        saved for backward).

    Returns
    -------
    Tensor
        Shape ``(n,)``, float32, on the inputs' device; an ordinary tensor (not an inference
        tensor).

    Raises
    ------
    ValueError
        If the model's outputs do not fit the loss (the message names the shapes).
    """
    n = batch_rows(inputs)
    check_target_rows(targets, n)
    step = n if forward_batch_size is None else max(1, int(forward_batch_size))
    device = _device_of(inputs)
    chunks = []
    with eval_mode(model):
        for start in range(0, n, step):
            rows = slice(start, start + step)
            no_grad = torch.inference_mode() if inference_mode else torch.no_grad()
            autocast = (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with no_grad, autocast:
                logits = model(index_rows(inputs, rows, n))
            chunk_targets = targets[rows]
            check_outputs(logits, chunk_targets, loss_fn, ignore_index, check_range)
            chunks.append(_scores(logits, chunk_targets, loss_fn, score, ignore_index))
    if not chunks:
        return torch.zeros(0, device=device)
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]
