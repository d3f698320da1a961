r"""IS-SGD, piece 4 of 4: when importance sampling is on.

The estimate
------------
With :math:`n` scores :math:`s` of uniformly drawn samples and :math:`\hat g = s / \sum_j s_j`,

.. math::

    \tau_{\mathrm{new}} = \sqrt{n \sum_i \hat g_i^2}
        = \frac{\mathrm{RMS}(s)}{\mathrm{mean}(s)} \ge 1

(:func:`variance_reduction`), smoothed as :math:`\tau \leftarrow m\,\tau + (1 - m)\,
\tau_{\mathrm{new}}` from :math:`\tau = 0` (:math:`m = 0.9`), as in the reference code of
Katharopoulos & Fleuret. If the scores were the per-sample gradient norms :math:`\|G_i\|`,
:math:`\tau^2 = \mathbb{E}\|G\|^2 / (\mathbb{E}\|G\|)^2` would be the ratio of the variances
of a uniform and an importance-sampled draw from an *infinite* super-batch (neglecting the
squared mean gradient next to the per-sample ones).

The variance reduction at a finite super-batch
-----------------------------------------------
A step of IS-SGD draws a super-batch of :math:`B` samples uniformly with replacement and then
:math:`b` of them with replacement by score. Its gradient estimate has the variance of the
super-batch mean *plus* that of the resampling. With the same two assumptions, the variance of
the step's estimate is :math:`(\mathbb{E}\|G\|)^2 (1 + (b\tau^2 - 1)/B) / b` against
:math:`(\mathbb{E}\|G\|)^2 \tau^2 / b` for a uniform minibatch, a ratio of

.. math::

    r_B(\tau) = \frac{B \tau^2}{B + b \tau^2 - 1}

(:func:`variance_ratio`). It grows with :math:`B` towards :math:`\tau^2`, and is below 1 at
:math:`B = b`: resampling a small super-batch adds more variance than the scores remove. IS is
worth turning on at a given :math:`B` when :math:`r_B(\tau)` exceeds a required ratio
:math:`c`, that is when :math:`\tau` exceeds

.. math::

    \tau_{\mathrm{th}}(c) = \sqrt{\frac{c\,(B - 1)}{B - c\,b}} \quad (B > c\,b;
    \text{ never otherwise})

(:func:`tau_threshold_for`), a threshold that *falls* with :math:`B` towards :math:`\sqrt c`.

The two rules
-------------
``switch="fidelity"`` (default): :math:`c = 1.2` (:data:`FIDELITY_VARIANCE_RATIO`) after a
uniform warm-up of 20 steps (:data:`WARMUP_STEPS`). The cost of a step plays no part, so a
larger :math:`B` turns IS on at least as often and, when on, gives a gradient of lower variance:
at a fixed number of steps a larger super-batch gives an equal or better run at a higher
cost, which is what the super-batch size needs to be a fidelity for ISBO. The numbers:

- :math:`c = 1.2`, at least a sixth less variance per step (:math:`1 - 1/1.2`), rather than
  any :math:`c > 1`: the scores are gradient norms with respect to the logits, which bound the
  per-sample parameter-gradient norms only up to a factor that differs from sample to sample
  (the Jacobian of the logits), so the realized reduction is smaller than the estimate, and a
  gain that small is lost in that slack. 1.2 is also the default threshold of the reference
  library's ``VarianceReductionCondition``, its rule that does not depend on :math:`B`
  (applied there to :math:`\tau`, here to the variance ratio :math:`r_B \approx \tau^2`; at
  large :math:`B` a threshold of :math:`\tau > \sqrt{1.2} \approx 1.095`).
- 20 warm-up steps: :math:`\tau` starts at 0 and reaches :math:`1 - 0.9^{k}` of its level
  after :math:`k` updates, 88 % after 20; by then it rests on the scores of :math:`20\,b`
  samples (640 at :math:`b = 32`), and the network is past its first, nearly uniform outputs
  (at initialization all scores are about :math:`\sqrt{1 - 1/C}` and :math:`\tau \approx 1`).

``switch="speed"``: IS is on only when it pays per second, when :math:`r_B(\tau)` exceeds the
cost ratio of an importance-sampled step to a uniform one. An IS step whose variance is
:math:`r` times lower is worth a uniform step on an :math:`r` times larger minibatch, which
costs about :math:`r` uniform steps; so IS pays when :math:`r_B > t_{\mathrm{IS}} /
t_{\mathrm{uniform}}`. The cost ratio is measured (:meth:`ISSwitch.record_step`): smoothed
seconds of a uniform step, of the rest of an IS step (loading :math:`B` samples, selecting,
training on :math:`b`) and of scoring one sample; the first step of each kind is not counted
(one-off costs). Until both kinds have been timed, the fixed model :math:`(B + 3b)/(3b)`
(:func:`fixed_cost_ratio`: :math:`B` scoring forward passes plus forward and backward on
:math:`b`, against :math:`3b`) decides; where it says no but :math:`r_B` exceeds
:math:`c = 1.2`, IS steps are taken to measure the price ("probe"), since the fixed model is
pessimistic wherever scoring is cheaper than a third of a training step per sample (inference
mode, autocast). At most :data:`PROBE_STEPS` (3) such steps are taken; if no timings come (the
loop never calls ``after_step``), the fixed model decides from then on.

An explicit ``tau_threshold`` overrides both: IS is on while :math:`\tau >` ``tau_threshold``,
with no warm-up, as in the reference implementation. :math:`B = b` is always uniform SGD.
The rule behind the latest decision is in :attr:`ISSwitch.rule`: ``"uniform"`` (``B == b``),
``"threshold"``, ``"warmup"``, ``"fidelity"``, ``"fixed-cost"``, ``"probe"`` or
``"measured-cost"``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, TypedDict

import torch
from torch import Tensor

from optuna_isbo.issgd.checks import as_float, as_int, as_sizes

__all__ = [
    "FIDELITY_VARIANCE_RATIO",
    "ISSwitch",
    "PROBE_STEPS",
    "SwitchStats",
    "WARMUP_STEPS",
    "fixed_cost_ratio",
    "tau_threshold_for",
    "variance_ratio",
    "variance_reduction",
]

SwitchMode = Literal["fidelity", "speed"]

FIDELITY_VARIANCE_RATIO = 1.2
"""Variance ratio :math:`r_B` above which ``switch="fidelity"`` turns IS on."""

WARMUP_STEPS = 20
"""Updates of :math:`\\tau` before ``"fidelity"`` or ``"speed"`` may turn IS on."""

TIMING_MOMENTUM = 0.9
"""Smoothing factor of the measured seconds."""

PROBE_STEPS = 3
"""IS steps ``"speed"`` may take to measure their price before the fixed model would."""

_MAX_PENDING = 64


def usable_scores(scores: Tensor) -> Tensor:
    """0-d bool tensor on the scores' device: finite, non-negative, with a positive finite sum."""
    total = scores.sum()
    return torch.isfinite(scores).all() & (scores >= 0).all() & torch.isfinite(total) & (total > 0)


def _float64_or_32(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def variance_reduction_tensor(scores: Tensor) -> Tensor:
    """``tau_new`` as a 0-d tensor on the scores' device, NaN for unusable scores (no sync)."""
    s = scores.detach().to(_float64_or_32(scores.device))
    g = s / s.sum()
    tau_new = torch.sqrt(len(s) * (g * g).sum())
    return torch.where(usable_scores(s), tau_new, torch.full_like(tau_new, math.nan))


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
        The estimate ``tau_new`` that feeds the smoothed ``tau`` of :class:`ISSwitch`.

    Raises
    ------
    ValueError
        If the scores are non-finite, negative or all zero.
    """
    if not bool(usable_scores(scores.detach().double())):
        raise ValueError("scores must be finite, non-negative and not all zero.")
    g = scores.detach().double() / scores.detach().double().sum()
    return math.sqrt(len(g) * float((g * g).sum()))


def fixed_cost_ratio(batch_size: int, super_batch_size: int) -> float:
    """``(B + 3b) / (3b)``: forward-pass equivalents of an IS step over those of a uniform one.

    An IS step scores ``B`` samples (one forward each) and trains on ``b`` (forward and backward,
    about three forwards each); a uniform step trains on ``b``.
    """
    return (super_batch_size + 3 * batch_size) / (3 * batch_size)


def variance_ratio(tau: float, batch_size: int, super_batch_size: int) -> float:
    """Estimated variance of a uniform step over an IS step's, ``B tau^2 / (B + b tau^2 - 1)``.

    Parameters
    ----------
    tau
        Estimated variance reduction ``RMS(s) / mean(s)`` of the scores (>= 0; 0 before any
        estimate).
    batch_size, super_batch_size
        ``b`` and ``B``.

    Returns
    -------
    float
        ``r_B(tau)``; above 1 when IS lowers the variance of a step at this ``B``. See the
        module docstring for the derivation.
    """
    t2 = tau * tau
    denominator = super_batch_size + batch_size * t2 - 1.0
    return 1.0 if denominator <= 0 else super_batch_size * t2 / denominator


def tau_threshold_for(ratio: float, batch_size: int, super_batch_size: int) -> float:
    """The ``tau`` above which ``variance_ratio(tau, b, B) > ratio``; ``inf`` if none.

    ``sqrt(ratio (B - 1) / (B - ratio b))`` for ``B > ratio b``. Decreasing in ``B``, towards
    ``sqrt(ratio)``.
    """
    big_b, b = float(super_batch_size), float(batch_size)
    if ratio <= 0:
        return 0.0
    if big_b <= ratio * b or big_b <= 1:
        return math.inf
    return math.sqrt(ratio * (big_b - 1) / (big_b - ratio * b))


class SwitchStats(TypedDict):
    """:attr:`ISSwitch.stats`: the switch's state, one type per key."""

    tau: float
    tau_threshold: float
    variance_ratio: float
    cost_ratio: float
    switch: str
    switch_rule: str
    uniform_step_seconds: float
    is_step_seconds: float
    scoring_seconds_per_sample: float


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else TIMING_MOMENTUM * old + (1 - TIMING_MOMENTUM) * new


class ISSwitch:
    """The running estimate of the variance reduction and the rule that turns IS on.

    Parameters
    ----------
    batch_size, super_batch_size
        ``b`` and ``B``, ``1 <= b <= B``.
    switch
        ``"fidelity"`` (default) or ``"speed"``; see the module docstring.
    tau_threshold
        If given, IS is on while ``tau > tau_threshold`` (no warm-up) and ``switch`` is ignored.
    momentum
        Smoothing factor ``m`` in ``[0, 1)`` of ``tau``. Not an optimizer momentum.
    warmup_steps
        Updates of ``tau`` before the ``"fidelity"`` or ``"speed"`` rule may turn IS on.
        Default :data:`WARMUP_STEPS` (20).

    Notes
    -----
    :meth:`update` takes scores on any device and does not wait for them: the estimate is a
    0-d tensor until :attr:`tau` (or a decision) reads it, which the training component does
    after the end of a step, when the device has finished anyway.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        super_batch_size: int,
        switch: SwitchMode = "fidelity",
        tau_threshold: float | None = None,
        momentum: float = 0.9,
        warmup_steps: int | None = None,
    ) -> None:
        batch_size, super_batch_size = as_sizes(batch_size, super_batch_size)
        if switch not in ("fidelity", "speed"):
            raise ValueError(f"switch must be 'fidelity' or 'speed', got {switch!r}.")
        if tau_threshold is not None:
            tau_threshold = as_float("tau_threshold", tau_threshold)
            if not (math.isfinite(tau_threshold) and tau_threshold >= 0):
                raise ValueError(f"tau_threshold must be finite and >= 0, got {tau_threshold!r}.")
        momentum = as_float("momentum", momentum)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
        warmup = WARMUP_STEPS if warmup_steps is None else as_int("warmup_steps", warmup_steps, 0)

        self._b = batch_size
        self._big_b = super_batch_size
        self._mode: SwitchMode = switch
        self._override = tau_threshold
        self._momentum = momentum
        self._warmup = warmup

        self._tau = 0.0
        self._n_updates = 0
        self._pending: list[Tensor] = []
        self._pending_negative: list[Tensor] = []
        self._warned_negative = False
        self._rule = ""
        self._uniform_seconds: float | None = None
        self._is_other_seconds: float | None = None
        self._scoring_per_sample: float | None = None
        self._n_timed = {True: 0, False: 0}
        self._n_probes = 0

    # ----------------------------------------------------------------------------- the estimate

    @property
    def mode(self) -> str:
        """``"fidelity"``, ``"speed"``, or ``"threshold"`` when ``tau_threshold`` was given."""
        return "threshold" if self._override is not None else self._mode

    @property
    def tau(self) -> float:
        """Smoothed estimate of the variance reduction ``RMS(s) / mean(s)`` (0 before any)."""
        self._fold()
        return self._tau

    @property
    def n_updates(self) -> int:
        """Batches of scores that have updated :attr:`tau` so far."""
        self._fold()
        return self._n_updates

    def update(self, scores: Tensor) -> None:
        """Feed the scores of uniformly drawn samples, shape ``(n,)``; unusable ones are skipped.

        Scores that are non-finite, negative or all zero leave :attr:`tau` unchanged; negative
        ones, a mistake of ``score="loss"``, also give one :class:`RuntimeWarning`.
        """
        if len(scores) == 0:
            return
        self._pending.append(variance_reduction_tensor(scores))
        if not self._warned_negative:
            self._pending_negative.append((scores.detach() < 0).any())
        if len(self._pending) >= _MAX_PENDING:
            self._fold()

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        for tau_new in pending:
            value = float(tau_new)
            if math.isfinite(value):
                self._tau = self._momentum * self._tau + (1.0 - self._momentum) * value
                self._n_updates += 1
        negative, self._pending_negative = self._pending_negative, []
        if negative and not self._warned_negative and bool(torch.stack(negative).any()):
            # Gradient norms are never negative: only score="loss" with a loss below 0 is.
            self._warned_negative = True
            warnings.warn(
                "ISSGD: some scores are negative, so those batches leave tau unchanged and "
                "importance sampling stays off while they last. score='loss' needs a "
                "non-negative per-sample loss: shift the loss, or use score='gnorm'.",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------------------- timings

    def record_step(self, importance: bool, step_seconds: float, scoring_seconds: float) -> None:
        """Record the wall-clock seconds of a finished step (the ``"speed"`` rule's prices).

        Parameters
        ----------
        importance
            Whether the step was importance-sampled.
        step_seconds
            Its whole duration: waiting for data, scoring, selecting, training.
        scoring_seconds
            The part spent scoring its ``B`` samples (0 for a uniform step).
        """
        self._n_timed[importance] += 1
        if self._n_timed[importance] == 1:
            return  # one-off costs: lazy initialization, allocator and loader warm-up
        if importance:
            other = max(step_seconds - scoring_seconds, 0.0)
            self._is_other_seconds = _smooth(self._is_other_seconds, other)
            per_sample = scoring_seconds / self._big_b
            self._scoring_per_sample = _smooth(self._scoring_per_sample, per_sample)
        else:
            self._uniform_seconds = _smooth(self._uniform_seconds, step_seconds)

    @property
    def measured_cost_ratio(self) -> float | None:
        """Smoothed seconds of an IS step over a uniform one; ``None`` until both are timed."""
        if (
            self._uniform_seconds is None
            or self._is_other_seconds is None
            or self._scoring_per_sample is None
            or self._uniform_seconds <= 0
        ):
            return None
        is_seconds = self._is_other_seconds + self._big_b * self._scoring_per_sample
        return is_seconds / self._uniform_seconds

    @property
    def cost_ratio(self) -> float:
        """The measured cost ratio once both kinds of step are timed, else ``(B + 3b) / (3b)``."""
        measured = self.measured_cost_ratio
        return fixed_cost_ratio(self._b, self._big_b) if measured is None else measured

    # ------------------------------------------------------------------------------ decision

    @property
    def tau_threshold(self) -> float:
        """The ``tau`` above which the current rule turns IS on (``inf``: never at this ``B``).

        For ``"fidelity"`` ``tau_threshold_for(1.2, b, B)``; for ``"speed"`` the same with the
        current :attr:`cost_ratio`; the given value for an explicit ``tau_threshold``.
        """
        if self._override is not None:
            return self._override
        if self._big_b == self._b:
            return math.inf
        ratio = FIDELITY_VARIANCE_RATIO if self._mode == "fidelity" else self.cost_ratio
        return tau_threshold_for(ratio, self._b, self._big_b)

    def decide(self) -> tuple[bool, str]:
        """Whether the next batch should be importance-sampled, and the rule that says so."""
        b, big_b = self._b, self._big_b
        if big_b == b:
            return False, "uniform"
        tau = self.tau
        if self._override is not None:
            return tau > self._override, "threshold"
        if self._n_updates < self._warmup:
            return False, "warmup"
        fidelity = tau > tau_threshold_for(FIDELITY_VARIANCE_RATIO, b, big_b)
        if self._mode == "fidelity":
            return fidelity, "fidelity"
        measured = self.measured_cost_ratio
        if measured is not None:
            return tau > tau_threshold_for(measured, b, big_b), "measured-cost"
        if tau > tau_threshold_for(fixed_cost_ratio(b, big_b), b, big_b):
            return True, "fixed-cost"
        if fidelity and self._n_probes < PROBE_STEPS:
            return True, "probe"
        return False, "fixed-cost"

    def next_is_importance(self) -> bool:
        """:meth:`decide` for the next batch, remembering the rule in :attr:`rule`."""
        importance, self._rule = self.decide()
        self._n_probes += self._rule == "probe"
        return importance

    @property
    def rule(self) -> str:
        """The rule behind the latest :meth:`next_is_importance` (``""`` before the first)."""
        return self._rule

    @property
    def stats(self) -> SwitchStats:
        """``tau``, ``tau_threshold``, ``variance_ratio``, ``cost_ratio``, timings and rule.

        Keys
        ----
        ``tau``, ``tau_threshold``
            :attr:`tau` and :attr:`tau_threshold` (``inf`` where IS cannot pay at this ``B``).
        ``variance_ratio``
            :func:`variance_ratio` at the current ``tau`` (1 for ``B == b``).
        ``cost_ratio``
            :attr:`cost_ratio`: measured once timed, else ``(B + 3b) / (3b)``.
        ``switch``, ``switch_rule``
            :attr:`mode` and :attr:`rule`.
        ``uniform_step_seconds``, ``is_step_seconds``, ``scoring_seconds_per_sample``
            Smoothed measured seconds; 0 until measured (the first step of each kind is
            not counted).
        """
        tau = self.tau
        ratio = 1.0 if self._big_b == self._b else variance_ratio(tau, self._b, self._big_b)
        is_step = (
            0.0
            if self._is_other_seconds is None or self._scoring_per_sample is None
            else self._is_other_seconds + self._big_b * self._scoring_per_sample
        )
        return {
            "tau": tau,
            "tau_threshold": self.tau_threshold,
            "variance_ratio": ratio,
            "cost_ratio": self.cost_ratio,
            "switch": self.mode,
            "switch_rule": self._rule,
            "uniform_step_seconds": self._uniform_seconds or 0.0,
            "is_step_seconds": is_step,
            "scoring_seconds_per_sample": self._scoring_per_sample or 0.0,
        }
