r"""IS-SGD, pieces 2 and 3 of 4: how samples are drawn, and how they are reweighted.

Drawing happens in two stages:

1. :class:`ISBatchSampler` draws indices uniformly with replacement from the :math:`N` samples
   of a dataset: a super-batch of :math:`B` while importance sampling is on, a minibatch of
   :math:`b` while it is off, so that uniform steps do not pay for loading :math:`B` samples.
   It is a batch sampler for the user's own :class:`~torch.utils.data.DataLoader`, so workers,
   transforms and pinned memory work unchanged.
2. :func:`sample_by_score` draws :math:`b` positions of the scored super-batch with replacement,
   with probability :math:`p_i = g_i / \sum_j g_j`, on the device the scores are on (inverse
   CDF of uniforms drawn by a CPU generator, so a seed gives the same draws on every device and
   nothing is copied back to the host).

Reweighting (:func:`importance_weights`): each drawn sample gets the weight
:math:`w_i = 1 / (B p_i)`, so that :math:`\mathbb{E}[\frac1b \sum_i w_i \nabla L_i]` is the mean
gradient of the super-batch, and therefore of the dataset: the estimator stays unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from optuna_isbo.issgd.checks import as_int, as_sizes
from optuna_isbo.issgd.switch import ISSwitch, usable_scores

__all__ = ["ISBatchSampler", "draw_by_score", "importance_weights", "sample_by_score"]


def _cdf_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _uniforms(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``n`` uniforms in [0, 1): drawn where the generator lives, then moved (no host sync)."""
    where = generator.device if generator is not None else torch.device("cpu")
    dtype = _cdf_dtype(device) if where.type == device.type else torch.float64
    u = torch.rand(n, generator=generator, device=where, dtype=dtype)
    if where.type == "cpu" and device.type == "cuda":
        u = u.pin_memory()  # so that the copy below is truly asynchronous
    return u.to(device=device, dtype=_cdf_dtype(device), non_blocking=True)


def importance_weights(scores: Tensor, positions: Tensor) -> Tensor:
    """Weights ``w_i = 1 / (B p_i) = sum(scores) / (B scores[i])`` of the drawn positions.

    Parameters
    ----------
    scores
        Shape ``(B,)``: scores of the super-batch, finite, non-negative, positive sum.
    positions
        Shape ``(b,)``: drawn positions in ``0..B-1``, each with a positive score.

    Returns
    -------
    Tensor
        Shape ``(b,)``, float32, on the scores' device.
    """
    s = scores.detach().to(_cdf_dtype(scores.device))
    return (s.sum() / (len(s) * s[positions])).float()


def draw_by_score(
    scores: Tensor, batch_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`sample_by_score` without a host synchronization, falling back to uniform.

    Unusable scores (non-finite, negative, all zero) are replaced by equal ones, which draws
    ``b`` positions uniformly with weights 1 (a uniform draw of a uniform super-batch is a
    uniform draw of the dataset).

    Returns
    -------
    positions
        Shape ``(b,)``, int64, on the scores' device.
    weights
        Shape ``(b,)``, float32, on the scores' device.
    usable
        0-d bool tensor on the scores' device: whether the scores were used.
    """
    device = scores.device
    s = scores.detach().to(_cdf_dtype(device))
    usable = usable_scores(s)
    s = torch.where(usable, s, torch.ones_like(s))
    cdf = torch.cumsum(s, dim=0)
    total = cdf[-1]
    # x = (1 - u) total lies in (0, total]; the first position with cdf >= x has a positive
    # score (a zero score repeats the previous cdf value), so no weight is infinite.
    x = (1.0 - _uniforms(batch_size, device, generator)) * total
    positions = torch.searchsorted(cdf, x).clamp_(max=len(s) - 1)
    weights = (total / (len(s) * s[positions])).float()
    return positions, weights, usable


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
        Random generator for the uniforms of the draw; a CPU generator (or ``None``, the
        global one) gives the same positions on every device.

    Returns
    -------
    positions
        Shape ``(b,)``, int64, on the scores' device: positions in ``0..B-1``.
    weights
        Shape ``(b,)``, float32, on the scores' device: ``w_i = 1 / (B p_i)`` with
        ``p = scores / sum``, so that the weighted minibatch mean is an unbiased estimate of
        the super-batch mean.

    Raises
    ------
    ValueError
        If the scores are non-finite, negative or all zero (this check waits for the device;
        :func:`draw_by_score` does not).
    """
    if not bool(usable_scores(scores.detach().double())):
        raise ValueError("scores must be finite, non-negative and not all zero.")
    positions, weights, _ = draw_by_score(scores, batch_size, generator)
    return positions, weights


class ISBatchSampler(Sampler[list[int]]):
    """Batch sampler for a DataLoader: ``B`` uniform indices while IS is on, ``b`` while off.

    Pass it as ``DataLoader(dataset, batch_sampler=...)``; obtain it from
    :meth:`ISSGDCallback.batch_sampler <optuna_isbo.issgd.callback.ISSGDCallback.batch_sampler>`,
    which shares the callback's switch. Indices are drawn uniformly with replacement by a seeded
    CPU generator; each batch's size is decided, by the switch, when the DataLoader asks for
    its indices.

    Parameters
    ----------
    n_samples
        Dataset size ``N`` (>= ``B``).
    switch
        The :class:`~optuna_isbo.issgd.switch.ISSwitch` deciding each batch's kind.
    batch_size, super_batch_size
        ``b`` and ``B``.
    n_steps
        Batches per iteration over the sampler (``len(sampler)``, so one DataLoader epoch).
    generator
        CPU generator drawing the indices; it is not reset between iterations, so every epoch
        draws new indices and the whole sequence follows from its seed.

    Notes
    -----
    A DataLoader with ``num_workers > 0`` asks for indices ahead of time (``prefetch_factor *
    num_workers`` batches; Lightning fetches one more), so a batch's kind is decided that many
    steps before it is trained on. The training component tells a super-batch from a minibatch
    by its size, so the lag changes when IS starts, never what a batch means. ``collate_fn``
    must keep every sample (a batch of ``b`` or ``B`` rows).
    """

    def __init__(
        self,
        n_samples: int,
        switch: ISSwitch,
        *,
        batch_size: int,
        super_batch_size: int,
        n_steps: int,
        generator: torch.Generator,
    ) -> None:
        self._n_samples = as_int("n_samples", n_samples, 1)
        self._b, self._big_b = as_sizes(batch_size, super_batch_size)
        if self._big_b > self._n_samples:
            raise ValueError(
                f"super_batch_size must be <= len(dataset) = {self._n_samples}, got {self._big_b}."
            )
        self._n_steps = as_int("n_steps", n_steps, 1)
        self._switch = switch
        self._generator = generator

    def __len__(self) -> int:
        return self._n_steps

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.index_batches(self._n_steps):
            yield indices.tolist()

    def index_batches(self, n_steps: int) -> Iterator[Tensor]:
        """``n_steps`` index tensors, shape ``(B,)`` or ``(b,)``, int64 on the CPU."""
        for _ in range(n_steps):
            size = self._big_b if self._switch.next_is_importance() else self._b
            yield torch.randint(self._n_samples, (size,), generator=self._generator)


def default_n_steps(n_samples: int, batch_size: int) -> int:
    """Batches of ``b`` in one pass over ``N`` samples, ``ceil(N / b)``."""
    return max(1, math.ceil(n_samples / batch_size))
