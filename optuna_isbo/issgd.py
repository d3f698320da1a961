r"""Importance-sampled SGD (IS-SGD) for any PyTorch training loop.

This module implements the importance sampling of Katharopoulos & Fleuret (2018) as four small
pieces:

1. **How samples are scored** (:func:`gradient_norm_scores`). The score of sample :math:`i` is
   the norm of the gradient of its loss with respect to its logits :math:`z_i`, an upper bound
   (up to a constant) of the norm of its gradient with respect to the parameters,

   .. math::

       g_i = \left\| \frac{\partial L_i}{\partial z_i} \right\|_2 ,

   which for softmax cross-entropy has the closed form
   :math:`g_i = \| \mathrm{softmax}(z_i) - \mathrm{onehot}(y_i) \|_2`. Other losses get their
   scores by automatic differentiation with respect to the logits; ``score="loss"`` uses the
   per-sample losses themselves.
2. **How samples are drawn** (:func:`sample_by_score`). A super-batch of :math:`B` indices is
   drawn uniformly with replacement from the :math:`N` samples of the dataset, scored, and a
   minibatch of :math:`b` indices is drawn from it with replacement with probability
   :math:`p_i = g_i / \sum_j g_j`.
3. **How they are reweighted**. Each drawn sample gets the weight :math:`w_i = 1 / (B p_i)`, so
   that :math:`\mathbb{E}[\frac1b \sum_i w_i \nabla L_i]` is the mean gradient of the
   super-batch, and therefore of the dataset: the estimator stays unbiased.
4. **When importance sampling is on** (:func:`variance_reduction`). With :math:`n` scores
   :math:`s` of uniformly drawn samples and :math:`\hat g = s / \sum_j s_j`,

   .. math::

       \tau_{\mathrm{new}} = \sqrt{n \sum_i \hat g_i^2}
           = \frac{\mathrm{RMS}(s)}{\mathrm{mean}(s)} \ge 1 .

   If the scores were exact per-sample gradient norms, :math:`\tau^2` would be the ratio of the
   second moments :math:`\mathbb{E}\|\nabla L_i\|^2` of the uniform and importance-sampled
   single-sample estimators, hence the ratio of their variances when the mean gradient is small
   next to the per-sample ones. The smoothed :math:`\tau \leftarrow m\,\tau + (1 - m)\,
   \tau_{\mathrm{new}}` (:math:`m = 0.9`, starting at 0) switches importance sampling on while
   :math:`\tau > \tau_{\mathrm{th}}`, by default :math:`\tau_{\mathrm{th}} = (B + 3b) / (3b)`:
   an importance-sampled step costs about :math:`B + 3b` forward-pass equivalents (:math:`B`
   scoring forwards, then forward and backward on :math:`b` samples), a uniform one :math:`3b`.

With :math:`B = b` this is exactly uniform SGD: importance sampling never switches on and every
weight is 1. Making :math:`B` a hyperparameter therefore turns it into a *fidelity*: the larger
:math:`B`, the lower the gradient variance and the higher the cost per step (Ariafar et al.,
2021).

References
----------
- A. Katharopoulos and F. Fleuret. Not All Samples Are Created Equal: Deep Learning with
  Importance Sampling. ICML 2018.
- S. Ariafar, Z. Mariet, E. Elhamifar, D. Brooks, J. Dy and J. Snoek. Weighting Is Worth the
  Wait: Bayesian Optimization with Importance Sampling. AISTATS 2021.
"""

from __future__ import annotations

import math
import numbers
import operator
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

if TYPE_CHECKING:
    import optuna

__all__ = ["ISSGD", "gradient_norm_scores", "sample_by_score", "variance_reduction"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(logits, targets) -> per-sample losses`` of shape ``(n,)``."""

_FORWARD_BATCH_SIZE_CAP = 1024

IGNORE_INDEX = -100
"""Target that the default cross-entropy ignores (as :func:`torch.nn.functional.cross_entropy`)."""


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _check_logits(logits: object, targets: Tensor) -> Tensor:
    """Logits must be a tensor with one row per sample, shape ``(len(targets), ...)``."""
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"The model must return a tensor of logits, got {type(logits).__name__}; wrap the "
            "model so that it returns the logits tensor only."
        )
    if logits.ndim == 0 or targets.ndim == 0 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            "logits and targets must have one row per sample: logits have shape "
            f"{_shape(logits)} and targets shape {_shape(targets)}."
        )
    return logits


def _check_cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int) -> None:
    """Raise a ValueError naming the shapes unless ``(logits, targets)`` suit cross-entropy.

    Logits must be ``(n, C)``; targets ``(n,)`` integer class indices in ``[0, C)`` or equal to
    ``ignore_index``, or ``(n, C)`` floating class probabilities.
    """
    if logits.ndim != 2:
        hint = (
            " For one logit per sample, pass a loss_fn such as "
            "torch.nn.functional.binary_cross_entropy_with_logits(..., reduction='none')."
            if logits.ndim == 1
            else " For several outputs per sample, pass a loss_fn that returns one loss per "
            "sample."
        )
        raise ValueError(
            "Cross-entropy scoring (loss_fn=None) needs logits of shape (n, C), got shape "
            f"{_shape(logits)} with targets of shape {_shape(targets)}." + hint
        )
    n, n_classes = logits.shape
    if targets.dtype.is_floating_point:
        if targets.shape != logits.shape:
            raise ValueError(
                "Cross-entropy with floating-point targets needs class probabilities of the "
                f"logits' shape {_shape(logits)}, got targets of shape {_shape(targets)}; "
                "class indices must be an integer tensor of shape (n,)."
            )
        return
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        raise ValueError(
            f"Cross-entropy targets must be integer class indices, got dtype {targets.dtype}."
        )
    if targets.shape != (n,):
        raise ValueError(
            f"Cross-entropy needs targets of shape ({n},) (class indices) for logits of shape "
            f"{_shape(logits)}, got targets of shape {_shape(targets)}."
        )
    bad = ((targets < 0) | (targets >= n_classes)) & (targets != ignore_index)
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"Cross-entropy targets must be class indices in [0, {n_classes}) for logits of shape "
            f"{_shape(logits)}, or ignore_index={ignore_index}; got target {value}."
        )


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
    residual[ignored] = 0.0
    return torch.linalg.vector_norm(residual, dim=1)


def _check_per_sample(losses: object, n: int) -> Tensor:
    if not isinstance(losses, Tensor) or losses.shape != (n,):
        got = f"shape {_shape(losses)}" if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return per-sample losses of shape ({n},), got {got}.")
    return losses


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
        Shape ``(n,)``, float32, detached.

    Raises
    ------
    ValueError
        If the shapes do not fit (the message names them), or a class index lies outside
        ``[0, C)`` and is not ``ignore_index``.
    """
    _check_logits(logits, targets)
    if loss_fn is None:
        _check_cross_entropy(logits, targets, ignore_index)
        return _closed_form_scores(logits, targets, ignore_index)
    z = logits.detach().float().requires_grad_(True)
    with torch.enable_grad():
        losses = _check_per_sample(loss_fn(z, targets), len(z))
        (grad,) = torch.autograd.grad(losses.sum(), z)
    return torch.linalg.vector_norm(grad.reshape(len(grad), -1), dim=1)


def _usable(scores: Tensor) -> bool:
    return bool(torch.isfinite(scores).all() and (scores >= 0).all() and scores.sum() > 0)


def variance_reduction(scores: Tensor) -> float:
    """Estimated variance reduction ``tau = sqrt(n * sum(g**2))``, ``g = scores / sum(scores)``.

    Equal to ``RMS(scores) / mean(scores)``, at least 1, and 1 exactly for equal scores.

    Parameters
    ----------
    scores
        Shape ``(n,)``, non-negative, finite, not all zero.

    Returns
    -------
    float
        The estimate ``tau_new`` that feeds the smoothed ``tau`` of :class:`ISSGD`.
    """
    if not _usable(scores):
        raise ValueError("scores must be finite, non-negative and not all zero.")
    g = scores.double() / scores.double().sum()
    return math.sqrt(len(g) * float((g * g).sum()))


def sample_by_score(
    scores: Tensor, batch_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Draw ``batch_size`` positions with replacement with probability proportional to score.

    Parameters
    ----------
    scores
        Shape ``(B,)``: scores of a super-batch; finite, non-negative, not all zero.
    batch_size
        Number ``b`` of positions to draw.
    generator
        CPU random generator for the draw.

    Returns
    -------
    positions
        Shape ``(b,)``, int64 on the CPU: positions in ``0..B-1``.
    weights
        Shape ``(b,)``, float32 on the CPU: ``w_i = 1 / (B p_i)`` with ``p = scores / sum``,
        so that the weighted minibatch mean is an unbiased estimate of the super-batch mean.
    """
    if not _usable(scores):
        raise ValueError("scores must be finite, non-negative and not all zero.")
    p = scores.detach().cpu().double()
    p = p / p.sum()
    positions = torch.multinomial(p, batch_size, replacement=True, generator=generator)
    weights = (1.0 / (len(p) * p[positions])).float()
    return positions, weights


def _model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _as_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an ``int``: any integral number (Python, NumPy, 0-d tensor); not a bool."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer{bound}, got the bool {value!r}.")
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"{name} must be an integer{bound}, got {value!r} of type {type(value).__name__}."
        ) from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an integer{bound}, got {result}.")
    return result


def _as_float(name: str, value: object) -> float:
    """``value`` as a ``float``: any real number (Python, NumPy), no bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    return float(value)


def _check_target_kind(targets: Tensor) -> None:
    """Targets ``(N, ...)`` of a dataset, checked for cross-entropy before any forward pass.

    Integer class indices must be ``(N,)`` and class probabilities ``(N, C)``; the class range
    is checked against the logits at the first step.
    """
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        raise ValueError(
            "Cross-entropy (loss_fn=None) needs integer class indices or floating class "
            f"probabilities as targets, got dtype {targets.dtype}."
        )
    if targets.dtype.is_floating_point and targets.ndim != 2:
        raise ValueError(
            "Cross-entropy (loss_fn=None) with floating-point targets needs class "
            f"probabilities, one (C,) row per sample; the dataset's targets have shape "
            f"{_shape(targets[0])} per sample. Class indices must be integers."
        )
    if not targets.dtype.is_floating_point and targets.ndim != 1:
        raise ValueError(
            "Cross-entropy (loss_fn=None) needs one integer class index per sample; the "
            f"dataset's targets have shape {_shape(targets[0])} per sample."
        )


def _describe(item: object) -> str:
    if isinstance(item, Tensor):
        return f"a single Tensor of shape {_shape(item)}"
    if isinstance(item, dict):
        return f"a dict with keys {sorted(map(str, item))}"
    if isinstance(item, tuple | list):
        return f"a {type(item).__name__} of {len(item)} elements"
    return f"a {type(item).__name__}"


def _check_item(item: object, index: int) -> tuple[Any, Any]:
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(
        f"dataset items must be (input, target) pairs, but item {index} is {_describe(item)}. "
        "Wrap the dataset so that __getitem__ returns (input, target)."
    )


def _stack(values: list[Any], indices: list[int], what: str) -> Tensor:
    tensors = []
    for value, index in zip(values, indices, strict=True):
        try:
            tensors.append(torch.as_tensor(value))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"The {what} of dataset item {index} ({type(value).__name__}) cannot be "
                f"converted to a tensor: {err}"
            ) from None
    shapes = {_shape(t) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset items must have {what}s of one shape to be batched, got shapes "
            f"{sorted(shapes)}."
        )
    return torch.stack(tensors)


class ISSGD:
    """Importance-sampled minibatches, weights and statistics for a PyTorch training loop.

    Each step draws a super-batch of ``super_batch_size`` (``B``) samples uniformly with
    replacement, scores them with the model in eval mode, and draws the ``batch_size`` (``b``)
    training samples from it with probability proportional to their score, with weights
    ``1 / (B p_i)`` that keep the gradient estimate unbiased. Importance sampling is only on
    while the estimated variance reduction :attr:`tau` exceeds :attr:`tau_threshold`; otherwise
    the step draws ``b`` samples uniformly (with replacement) with weights 1, and the scores of
    those samples, computed by :meth:`weighted_loss` from the training logits, keep ``tau``
    up to date. See the module docstring for the math.

    Example
    -------
    .. code-block:: python

        issgd = ISSGD(model, train_set, batch_size=128, super_batch_size=512, seed=0)
        for inputs, targets, weights in issgd.batches(1000):
            optimizer.zero_grad()
            loss = issgd.weighted_loss(model(inputs), targets, weights)
            loss.backward()
            optimizer.step()
        issgd.report(trial)  # optional: statistics and cost as Optuna user attributes

    Parameters
    ----------
    model
        The network being trained; its outputs are the logits. Batches are placed on the device
        of its first parameter (or buffer; CPU if it has neither).
    dataset
        A map-style dataset (``__len__`` and ``__getitem__``) whose items are
        ``(input, target)`` pairs (a tuple or list of two). A
        :class:`~torch.utils.data.TensorDataset` of two tensors is indexed with one index tensor
        per batch; any other dataset is read item by item, each element converted with
        :func:`torch.as_tensor` and the batch collated with :func:`torch.stack`. Items of any
        other form (a single tensor, three elements, a dict) raise :class:`ValueError`: wrap such
        a dataset so that it returns ``(input, target)``. Pass the dataset itself, not a
        :class:`~torch.utils.data.DataLoader`: ISSGD draws its own indices.
    batch_size
        Minibatch size ``b`` (>= 1).
    super_batch_size
        Super-batch size ``B`` with ``b <= B <= len(dataset)``. ``B == b`` is plain uniform SGD.
    loss_fn
        ``loss_fn(logits, targets) -> per-sample losses`` of shape ``(n,)``. ``None`` (default)
        is softmax cross-entropy, whose scores have a closed form; it needs logits of shape
        ``(n, C)`` and targets of shape ``(n,)`` (integer class indices in ``[0, C)`` or
        ``ignore_index``) or ``(n, C)`` (class probabilities), and raises :class:`ValueError`
        naming the shapes otherwise. Any other loss is scored by automatic differentiation with
        respect to the logits (its ``i``-th loss must depend on row ``i`` of the logits only).
    score
        ``"gnorm"`` (default): the norm of the loss gradient with respect to the logits.
        ``"loss"``: the per-sample loss (must be non-negative).
    tau_threshold
        Importance sampling is on while ``tau > tau_threshold``. Default ``(B + 3b) / (3b)``:
        on only when the estimated variance reduction pays for the ``B`` extra forward passes.
    momentum
        Smoothing factor ``m`` in ``[0, 1)`` of the running estimate of ``tau``:
        ``tau <- m * tau + (1 - m) * tau_new``. This is **not** an optimizer momentum.
    forward_batch_size
        Number of samples per scoring forward pass. Default ``max(b, min(B, 1024))``.
    seed
        Seed of the random generator that draws every index; ``None`` for a random seed. With a
        seed and a deterministic model the sequence of batches is reproducible.
    ignore_index
        Used by the default cross-entropy only (``loss_fn=None``): targets equal to it are
        ignored, as by :func:`torch.nn.functional.cross_entropy`, whose default (-100) it
        shares. An ignored sample has loss 0 and score 0: importance sampling never draws it,
        and a uniform batch counts it as a zero in the mean of :meth:`weighted_loss`. Both
        kinds of step thus estimate the same objective, the mean over *all* samples with the
        ignored ones contributing 0 (torch's ``reduction="mean"`` divides by the number of
        samples not ignored instead, which varies from batch to batch).

    Sizes and the seed accept any integral number (``int``, NumPy integers); bools and
    non-integers raise :class:`ValueError`.

    Notes
    -----
    Timings (:attr:`stats`, :meth:`report`) are wall-clock, measured by :meth:`batches` itself;
    on CUDA devices the device is synchronized at each measuring point so that asynchronous
    kernels are charged to the right step.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        super_batch_size: int,
        loss_fn: LossFn | None = None,
        score: Literal["gnorm", "loss"] = "gnorm",
        tau_threshold: float | None = None,
        momentum: float = 0.9,
        forward_batch_size: int | None = None,
        seed: int | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if isinstance(dataset, DataLoader):
            raise TypeError(
                "dataset must be a map-style Dataset, got a DataLoader; pass its dataset "
                "(loader.dataset) instead: ISSGD draws its own indices and batches."
            )
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                "dataset must be a map-style Dataset (__len__ and __getitem__), got the "
                f"IterableDataset {type(dataset).__name__}: ISSGD needs random access by index."
            )
        try:
            n_samples = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError("dataset must be a map-style Dataset with __len__.") from None
        if not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"dataset must be a map-style Dataset with __getitem__, got "
                f"{type(dataset).__name__}."
            )
        if n_samples < 1:
            raise ValueError("dataset must not be empty.")
        batch_size = _as_int("batch_size", batch_size, 1)
        super_batch_size = _as_int("super_batch_size", super_batch_size, batch_size)
        if super_batch_size > n_samples:
            raise ValueError(
                f"super_batch_size must be <= len(dataset) = {n_samples}, got {super_batch_size}."
            )
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError("loss_fn must be callable or None.")
        if score not in ("gnorm", "loss"):
            raise ValueError(f"score must be 'gnorm' or 'loss', got {score!r}.")
        if tau_threshold is None:
            tau_threshold = (super_batch_size + 3 * batch_size) / (3 * batch_size)
        else:
            tau_threshold = _as_float("tau_threshold", tau_threshold)
            if not (math.isfinite(tau_threshold) and tau_threshold >= 0):
                raise ValueError(f"tau_threshold must be finite and >= 0, got {tau_threshold!r}.")
        momentum = _as_float("momentum", momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        if forward_batch_size is None:
            forward_batch_size = max(batch_size, min(super_batch_size, _FORWARD_BATCH_SIZE_CAP))
        forward_batch_size = _as_int("forward_batch_size", forward_batch_size, 1)
        if seed is not None:
            seed = _as_int("seed", seed)
            if not -(2**63) <= seed < 2**64:
                raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}.")
        ignore_index = _as_int("ignore_index", ignore_index)

        self._tensors: tuple[Tensor, Tensor] | None = None
        if isinstance(dataset, TensorDataset):
            if len(dataset.tensors) != 2:
                raise ValueError(
                    "dataset items must be (input, target) pairs: a TensorDataset of exactly two "
                    f"tensors, got {len(dataset.tensors)}."
                )
            self._tensors = (dataset.tensors[0], dataset.tensors[1])
            targets = self._tensors[1]
        else:
            _, target = _check_item(dataset[0], 0)
            targets = _stack([target], [0], "target")
        if loss_fn is None:
            _check_target_kind(targets)

        self._model = model
        self._dataset = dataset
        self._n_samples = n_samples
        self._batch_size = batch_size
        self._super_batch_size = super_batch_size
        self._loss_fn = loss_fn
        self._score = score
        self._tau_threshold = float(tau_threshold)
        self._momentum = float(momentum)
        self._forward_batch_size = forward_batch_size
        self._ignore_index = ignore_index
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

        self._tau = 0.0
        self._feed_tau = False
        self._steps = 0
        self._is_steps = 0
        self._fallback_steps = 0
        self._samples_scored = 0
        self._scoring_seconds = 0.0
        self._sampling_seconds = 0.0
        self._training_seconds = 0.0

    # ----------------------------------------------------------------------------- properties

    @property
    def tau(self) -> float:
        """Current smoothed estimate of the variance reduction (0 before the first update)."""
        return self._tau

    @property
    def tau_threshold(self) -> float:
        """Importance sampling is on while :attr:`tau` exceeds this value."""
        return self._tau_threshold

    @property
    def is_active(self) -> bool:
        """Whether the next batch will be importance-sampled (never when ``B == b``)."""
        return self._super_batch_size > self._batch_size and self._tau > self._tau_threshold

    @property
    def stats(self) -> dict[str, float | int]:
        """A snapshot of the statistics so far.

        Keys
        ----
        ``steps``
            Batches yielded by :meth:`batches`.
        ``is_steps``
            Of those, batches drawn by importance sampling.
        ``fallback_steps``
            Steps that should have been importance-sampled but fell back to uniform sampling
            because the super-batch scores were non-finite, negative or all zero.
        ``samples_scored``
            Samples passed through a scoring forward pass (``B`` per importance step).
        ``tau``, ``tau_threshold``
            Current smoothed variance-reduction estimate and the switching threshold.
        ``batch_size``, ``super_batch_size``
            ``b`` and ``B``.
        ``scoring_seconds``
            Wall-clock seconds spent in scoring forward passes.
        ``sampling_seconds``
            Wall-clock seconds spent drawing indices, gathering samples and moving them to the
            model's device (outside scoring).
        ``training_seconds``
            Wall-clock seconds between handing out a batch and the request for the next one
            (or the end of the loop): the caller's forward, :meth:`weighted_loss`, backward and
            optimizer step, and anything else done inside the loop body.
        ``cost_seconds``
            ``scoring_seconds + sampling_seconds + training_seconds``: the wall-clock time of
            the training loop driven by :meth:`batches`, without anything done before the first
            batch or after the loop (such as validation).
        """
        cost_seconds = self._scoring_seconds + self._sampling_seconds + self._training_seconds
        return {
            "steps": self._steps,
            "is_steps": self._is_steps,
            "fallback_steps": self._fallback_steps,
            "samples_scored": self._samples_scored,
            "tau": self._tau,
            "tau_threshold": self._tau_threshold,
            "batch_size": self._batch_size,
            "super_batch_size": self._super_batch_size,
            "scoring_seconds": self._scoring_seconds,
            "sampling_seconds": self._sampling_seconds,
            "training_seconds": self._training_seconds,
            "cost_seconds": cost_seconds,
        }

    # ------------------------------------------------------------------------------ public API

    def batches(self, n_steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Iterate over ``n_steps`` training batches.

        Parameters
        ----------
        n_steps
            Number of batches (>= 0).

        Yields
        ------
        inputs
            Shape ``(b, ...)`` on the model's device.
        targets
            Shape ``(b, ...)`` on the model's device.
        weights
            Shape ``(b,)``, float32 on the model's device: ``1 / (B p_i)`` for an importance
            step, ones otherwise. Always finite.
        """
        return self._batches(_as_int("n_steps", n_steps, 0))

    def weighted_loss(self, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        """Weighted mean of the per-sample losses, ``mean(weights * loss_fn(logits, targets))``.

        For a batch drawn uniformly (importance sampling off), the first call after the batch
        was handed out also updates :attr:`tau` with the scores computed from these ``logits``,
        at no extra forward pass. A loop that computes its own loss instead never updates
        ``tau`` while importance sampling is off, so it never switches on.

        Parameters
        ----------
        logits
            Shape ``(b, C)``: the model's outputs for the batch, with gradient (``(b, ...)``
            for a custom ``loss_fn``).
        targets
            The batch's targets, shape ``(b, ...)``.
        weights
            Shape ``(b,)``: the weights yielded with the batch; treated as constants.

        Returns
        -------
        Tensor
            A scalar with gradient.

        Raises
        ------
        ValueError
            If the shapes do not fit the loss (the message names them), or a class index of the
            default cross-entropy is out of range.
        """
        self._check_outputs(logits, targets)
        if not isinstance(weights, Tensor) or weights.shape != (len(logits),):
            got = f"shape {_shape(weights)}" if isinstance(weights, Tensor) else repr(weights)
            raise ValueError(f"weights must have shape ({len(logits)},), got {got}.")
        losses = _check_per_sample(self._per_sample_loss(logits, targets), len(logits))
        if self._feed_tau:
            self._feed_tau = False
            self._update_tau(self._scores_from_logits(logits, targets, losses))
        return (weights.detach().to(losses.dtype) * losses).mean()

    def scores(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Score samples with the model in eval mode, without gradient, in chunks.

        Every submodule's train/eval mode is restored afterwards, so BatchNorm running
        statistics do not move and dropout is off while scoring.

        Parameters
        ----------
        inputs
            Shape ``(n, ...)`` on the model's device.
        targets
            Shape ``(n, ...)`` on the model's device.

        Returns
        -------
        Tensor
            Shape ``(n,)``, float32.

        Raises
        ------
        ValueError
            If the model's outputs do not fit the loss (see :meth:`weighted_loss`).
        """
        modes = [(module, module.training) for module in self._model.modules()]
        self._model.eval()
        try:
            chunks = []
            with torch.no_grad():
                for start in range(0, len(inputs), self._forward_batch_size):
                    stop = start + self._forward_batch_size
                    logits = self._model(inputs[start:stop])
                    self._check_outputs(logits, targets[start:stop])
                    chunks.append(self._scores_from_logits(logits, targets[start:stop]))
        finally:
            for module, training in modes:
                module.training = training
        return torch.cat(chunks)

    def report(self, trial: optuna.trial.BaseTrial) -> None:
        """Write :attr:`stats` to the trial as user attributes.

        ``"isbo:cost"`` holds ``stats["cost_seconds"]`` (float seconds), the cost that
        :class:`~optuna_isbo.ISBOSampler` models; every other statistic ``key`` goes under
        ``"isbo:<key>"`` (for example ``"isbo:is_steps"``).

        Parameters
        ----------
        trial
            Any object with ``set_user_attr``, typically the :class:`optuna.trial.Trial` passed
            to the objective.
        """
        stats = self.stats
        trial.set_user_attr("isbo:cost", float(stats.pop("cost_seconds")))
        for key, value in stats.items():
            trial.set_user_attr(f"isbo:{key}", value)

    # -------------------------------------------------------------------------------- private

    def _check_outputs(self, logits: object, targets: Tensor) -> None:
        _check_logits(logits, targets)
        if self._loss_fn is None:
            _check_cross_entropy(logits, targets, self._ignore_index)  # type: ignore[arg-type]

    def _per_sample_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self._loss_fn is None:
            return _cross_entropy(logits, targets, self._ignore_index)
        return self._loss_fn(logits, targets)

    def _scores_from_logits(
        self, logits: Tensor, targets: Tensor, losses: Tensor | None = None
    ) -> Tensor:
        if self._score == "loss":
            if losses is None:
                losses = self._per_sample_loss(logits.detach().float(), targets)
            return _check_per_sample(losses, len(logits)).detach().float()
        if self._loss_fn is None:
            return _closed_form_scores(logits, targets, self._ignore_index)
        return gradient_norm_scores(logits, targets, self._loss_fn)

    def _update_tau(self, scores: Tensor) -> None:
        if _usable(scores):
            tau_new = variance_reduction(scores)
            self._tau = self._momentum * self._tau + (1.0 - self._momentum) * tau_new

    def _synchronize(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _gather(self, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            inputs = inputs[indices.to(inputs.device)]
            targets = targets[indices.to(targets.device)]
        else:
            positions = indices.tolist()
            pairs = [_check_item(self._dataset[i], i) for i in positions]
            inputs = _stack([pair[0] for pair in pairs], positions, "input")
            targets = _stack([pair[1] for pair in pairs], positions, "target")
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def _uniform_indices(self, n: int) -> Tensor:
        return torch.randint(self._n_samples, (n,), generator=self._generator)

    def _batches(self, n_steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        b, big_b = self._batch_size, self._super_batch_size
        for _ in range(n_steps):
            device = _model_device(self._model)
            self._synchronize(device)
            start = time.perf_counter()
            scoring_seconds = 0.0
            importance = self.is_active
            if importance:
                inputs, targets = self._gather(self._uniform_indices(big_b), device)
                scoring_start = time.perf_counter()
                scores = self.scores(inputs, targets)
                usable = _usable(scores)
                self._synchronize(device)
                scoring_seconds = time.perf_counter() - scoring_start
                self._samples_scored += big_b
                if usable:
                    self._update_tau(scores)
                    positions, weights = sample_by_score(scores, b, self._generator)
                    usable = bool(torch.isfinite(weights).all())
                if usable:
                    positions = positions.to(device)
                    inputs, targets = inputs[positions], targets[positions]
                    self._is_steps += 1
                else:
                    warnings.warn(
                        "ISSGD: the super-batch scores are non-finite, negative or all zero; "
                        "this step falls back to uniform sampling.",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self._fallback_steps += 1
                    importance = False
            if not importance:
                inputs, targets = self._gather(self._uniform_indices(b), device)
                weights = torch.ones(b)
            weights = weights.to(device, non_blocking=True)
            self._synchronize(device)
            handed_out = time.perf_counter()
            self._scoring_seconds += scoring_seconds
            self._sampling_seconds += handed_out - start - scoring_seconds
            self._steps += 1
            self._feed_tau = not importance
            try:
                yield inputs, targets, weights
            finally:
                self._feed_tau = False
                self._synchronize(device)
                self._training_seconds += time.perf_counter() - handed_out
