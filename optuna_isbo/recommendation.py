r"""Which configuration to hand back, and the evidence at the target fidelity behind it.

A multi-fidelity study evaluates most configurations at cheap fidelities only, so the posterior
at the target ``s = 1`` is mostly an extrapolation through the fidelity kernel, and that
kernel's hyperparameters are themselves fitted to few target-fidelity points. Two rules keep the
recommendation honest:

* **Recommend what the evidence supports.** The recommendation minimizes the upper end of
  the 80% posterior interval at the target, ``mu(x, 1) + 1.28 sigma(x, 1)``
  (:func:`choose_supported`), over the candidates. Once any configuration has been evaluated
  at the target, the candidates are the target-evaluated configurations, even after the model
  passed its checks (below): a configuration seen at cheap fidelities only is an
  extrapolation through the fidelity kernel, a kernel fitted to biased cheap runs
  extrapolates with confidence it has not earned, and the lowest upper bound among many
  extrapolations is the most optimistic of them. A model that failed its checks is not used
  to rank at all: the recommendation is then the configuration with the best observed target
  value (:func:`recommendation_rule`), and its uncertainty comes from a GP fitted to the
  target-fidelity trials alone. Before the first target evaluation every configuration
  is a candidate.
  :attr:`Recommendation.n_target_evaluations` says which kind of evidence the result has.

* **Verify what the model believes.** When the configuration with the lowest ``mu(x, 1)``
  over *all* evaluated configurations has no evaluation at the target, the sampler evaluates
  it there next, as long as the target fidelity has received less than a fraction ``rho`` of
  the cost spent so far (:func:`verification_due`; target trials of the random startup design
  do not count). A cheap fidelity whose bias misleads is
  then found out by the evaluation itself: the model sees the target value of the
  configuration the cheap runs favour. With a cheap fidelity that is exact, the verified
  configuration is the one the cheap runs found, and at most ``rho`` of the cost goes to the
  target: most trials stay cheap. This is the "screen cheap, then evaluate the best at the
  target" scheme (Egele et al., "Is One Epoch All You Need For Multi-Fidelity Hyperparameter
  Optimization?", ESANN 2023), driven by the model's posterior instead of raw cheap values.

* **Check the model against what it predicted.** Each verification trial compares the
  model's prediction at the target with what was then observed. When the predictions missed
  by more than their stated uncertainty, every target standard deviation is widened by that
  factor ``kappa`` (:func:`calibration_factor`) before the recommendation is chosen and
  reported. The model's word counts (its multi-fidelity search's share of the cost grows)
  while ``kappa <= 2`` after at least one check; when at least two checks give
  ``kappa > 2``, the observed target values decide, and the sampler asks at the target
  fidelity only (until later verifications bring the factor back), with a GP fitted to the
  target trials alone: plain
  Bayesian optimization at the target. For a calibrated model ``kappa^2`` is a mean of ``k``
  squared standard normals, which exceeds 4 with probability ``0.046`` (``k = 1``),
  ``0.018`` (``k = 2``) and ``0.007`` (``k = 3``).

The reported value is the posterior mean of the latent objective at the target, ``mu(x, 1)``,
and the standard deviation ``kappa sqrt(var(x, 1))``, in the study's units and direction;
under ``"observed"`` both come from the GP of the target trials alone, without ``kappa``.
Where the model cannot tell configurations apart (parameters outside the joint search space)
or has not been fitted, and for a configuration whose target values the outlier fence
changed, the ranking and the report use observed means instead, with no standard deviation
(:func:`optuna_isbo.decisions.choose_recommendation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import scipy.stats
import torch

# ``s`` at or above this counts as the target fidelity (``s = 1`` up to round-off).
TARGET_S = 1.0 - 1e-9
# Phi^{-1}(0.9): the upper end of a central 80% interval is mu + Z_80 sigma.
Z_80 = 1.2815515655446004
# The calibration factor up to which the model's extrapolations to the target are trusted.
MAX_TRUSTED_KAPPA = 2.0
# Verification trials needed before a model that failed them is overruled by observations.
MIN_FAILING_CHECKS = 2
# Observations a model needs before its posterior is reported: its predictive distribution is
# a Student-t with ``n - 1`` degrees of freedom (:func:`small_sample_factor`), whose variance
# exists only for more than 2 of them.
MIN_MODEL_OBSERVATIONS = 4


@dataclass(frozen=True)
class Recommendation:
    """The configuration to retrain, with the model's prediction at the target fidelity.

    Attributes
    ----------
    params
        Parameter name to value, the fidelity parameter set to its target.
    value
        Posterior mean of the objective at the target fidelity, in the study's units (a
        maximized study gets the predicted maximum, not its negation), or an observed mean
        where ``std`` is NaN (see there; below the target where :attr:`observed_at` says so).
    std
        Posterior standard deviation of that value (of the noise-free objective). ``nan`` when
        ``value`` is an observed mean instead: when no model could be fitted (a single
        completed trial, or a failed fit), when the configuration's target values are
        outliers the model saw pulled in to its fence
        (:func:`~optuna_isbo.model.tame_outliers`), and when trials the model sees as one
        configuration differ in parameters outside the joint search space (a conditional
        parameter the model does not see): exact configurations are then ranked by their
        observed means, and ``value`` and ``n_target_evaluations`` are those of the exact
        parameters returned (:func:`optuna_isbo.decisions.choose_recommendation`).
    trial_number
        The completed trial whose configuration this is (if several share it, the best of
        them, target evaluations first, then those observed feasible; its parameters are the
        ones returned).
    n_target_evaluations
        Completed trials that evaluated this configuration at the target fidelity (runs above
        the target do not count). 0 means the prediction rests on lower fidelities only.
    feasibility_probability
        In a constrained study (``trial.set_constraint``), the probability that the
        configuration is feasible at the target: the share of its target evaluations that were
        feasible (among those with every constraint value recorded), or the constraint model's
        where it has none. NaN where nothing is known about it (no model, no recorded value).
        ``None`` without constraints.
    observed_at
        ``None``, or where ``value`` was observed when it is not about the target: with
        no target evaluation and no model prediction behind it (a single cheap trial, or
        configurations the model cannot tell apart), ``value`` is the mean observed at the
        highest fidelity evaluated, e.g. ``{"super_batch_size": 32}``.
    """

    params: dict[str, Any]
    value: float
    std: float
    trial_number: int
    n_target_evaluations: int
    feasibility_probability: float | None = None
    observed_at: dict[str, Any] | None = None

    def interval(self, level: float = 0.8) -> tuple[float, float]:
        """Central posterior interval ``value -/+ z std`` of probability ``level``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level}.")
        z = math.sqrt(2.0) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64)))
        return self.value - z * self.std, self.value + z * self.std

    def summary(self) -> str:
        """One line for people: the trial, its parameters and what is predicted at the target.

        For example ``trial 17 (lr=0.0031, super_batch_size=512): 0.1234 +- 0.0040 at the
        target, 2 target evaluations, feasible with probability 0.97``. A value observed
        below the target (:attr:`observed_at`) says so: ``trial 0 (...): 0.04444 observed at
        super_batch_size=32, below the target (no target evaluation, no prediction)``. The
        study's ``isbo:recommendation`` user attribute holds it, where optuna-dashboard
        shows it.
        """
        params = ", ".join(f"{name}={_short(value)}" for name, value in self.params.items())
        text = f"trial {self.trial_number} ({params}): {_short(self.value)}"
        if math.isfinite(self.std):
            text += f" +- {_short(self.std)}"
        evaluations = self.n_target_evaluations
        if self.observed_at:
            where = ", ".join(
                f"{name}={_short(value)}" for name, value in self.observed_at.items()
            )
            text += f" observed at {where}, below the target (no target evaluation, no prediction)"
        else:
            text += f" at the target, {evaluations} target evaluation{'s' * (evaluations != 1)}"
            if evaluations == 0:
                text += " (extrapolated from cheaper runs)"
        p = self.feasibility_probability
        if p is not None:
            text += (
                ", feasibility unknown"
                if math.isnan(p)
                else f", feasible with probability {p:.2f}"
            )
        return text


def _short(value: Any) -> str:
    """A value as a person reads it: floats to four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Configurations:
    """The distinct configurations among evaluated inputs.

    Attributes
    ----------
    X
        ``(k, d)`` distinct encoded configurations.
    first_index
        ``(k,)`` index into the inputs of the first evaluation of each configuration.
    n_target
        ``(k,)`` number of evaluations of each configuration at the target fidelity.
    index
        ``(n,)`` the configuration of each evaluation.
    """

    X: torch.Tensor
    first_index: torch.Tensor
    n_target: torch.Tensor
    index: torch.Tensor


def group_configurations(X: torch.Tensor, s: torch.Tensor) -> Configurations:
    """Group evaluated inputs by configuration.

    Parameters
    ----------
    X
        ``(n, d)`` encoded hyperparameters of the evaluations (``d`` may be 0: then all
        evaluations share one configuration).
    s
        ``(n,)`` their fidelities; all ones when the space has no fidelity axis.
    """
    n = X.shape[0]
    if X.shape[1] == 0:
        inverse = torch.zeros(n, dtype=torch.long)
        configs = X[:1]
    else:
        configs, inverse = torch.unique(X, dim=0, return_inverse=True)
    k = configs.shape[0]
    order = torch.arange(n)
    first = torch.full((k,), n, dtype=torch.long).scatter_reduce(0, inverse, order, reduce="amin")
    at_target = is_target(s).to(torch.long)
    n_target = torch.zeros(k, dtype=torch.long).scatter_add(0, inverse, at_target)
    return Configurations(X=configs, first_index=first, n_target=n_target, index=inverse)


def choose_supported(
    mean_at_target: torch.Tensor,
    std_at_target: torch.Tensor,
    n_target: torch.Tensor | None = None,
    *,
    extrapolate: bool = False,
    z: float = Z_80,
) -> int:
    """Index of the candidate with the lowest upper bound ``mu + z sigma`` at the target.

    The candidates are the configurations with at least one target evaluation; all of them
    while none has one, when ``extrapolate`` is set, or when ``n_target`` is not given. Among
    candidates, a small ``sigma`` (target evaluations, little noise) is preferred to a lucky
    mean: ``z = 1.28`` is the upper end of the 80% interval that :class:`Recommendation`
    reports.

    Parameters
    ----------
    mean_at_target, std_at_target
        ``(k,)`` posterior means and standard deviations at the target fidelity
        (minimization).
    n_target
        ``(k,)`` number of target-fidelity evaluations of each configuration.
    extrapolate
        Whether configurations without a target evaluation are candidates too (see
        :func:`recommendation_rule`).
    z
        Weight of the standard deviation.
    """
    bound = mean_at_target + z * std_at_target
    if not extrapolate and n_target is not None and bool((n_target > 0).any()):
        bound = torch.where(n_target > 0, bound, math.inf)
    return int(bound.argmin())


Rule = Literal["extrapolate", "supported", "observed"]


def recommendation_rule(kappa: float, n_checks: int, max_kappa: float = MAX_TRUSTED_KAPPA) -> Rule:
    """How far the model's word is taken, from how its target predictions fared.

    * ``"extrapolate"``: the model passed its checks (at least one verification trial and a
      calibration factor of at most ``max_kappa``); its multi-fidelity search may take a
      larger share of the cost (:func:`~optuna_isbo.decisions.mf_share`). The recommendation
      ranks the target-evaluated configurations by the model, as under ``"supported"``.
    * ``"supported"``: not checked yet, or one check failed; only configurations with target
      evaluations are candidates, ranked by the model.
    * ``"observed"``: the model failed at least ``MIN_FAILING_CHECKS`` (2) checks
      (``kappa > max_kappa``). A model that mispredicted the target where it was checked also
      misfits the target observations it has (it reconciles them with biased cheap ones), so
      its ranking is not used: the candidate is the configuration with the best mean observed
      value at the target. One check is weak evidence for a decision this strong (the sampler
      then leaves the cheap fidelities): a calibrated model fails one with probability
      ``P(chi^2_1 > 4) = 0.046``, two with ``P(chi^2_2 > 8) = 0.018``.

    Parameters
    ----------
    kappa
        :func:`calibration_factor` of the verification trials.
    n_checks
        Number of verification trials behind it.
    max_kappa
        Largest trusted factor.
    """
    if n_checks == 0:
        return "supported"
    if kappa <= max_kappa:
        return "extrapolate"
    return "observed" if n_checks >= MIN_FAILING_CHECKS else "supported"


def best_observed_at_target(configs: Configurations, s: torch.Tensor, y: torch.Tensor) -> int:
    """Index of the configuration with the lowest mean observed value at the target.

    Parameters
    ----------
    configs
        :func:`group_configurations` of the evaluations.
    s, y
        ``(n,)`` fidelities and values (minimization) of the evaluations.

    Raises
    ------
    ValueError
        If no evaluation is at the target.
    """
    at_target = is_target(s)
    if not bool(at_target.any()):
        raise ValueError("No evaluation at the target fidelity.")
    k = configs.X.shape[0]
    total = torch.zeros(k, dtype=y.dtype).scatter_add(
        0, configs.index, torch.where(at_target, y, 0)
    )
    mean = torch.where(configs.n_target > 0, total / configs.n_target.clamp_min(1), math.inf)
    return int(mean.argmin())


def calibration_factor(
    observed: torch.Tensor, predicted: torch.Tensor, predicted_std: torch.Tensor
) -> float:
    r"""How far the model's target predictions have been off, in units of their stated std.

    Every verification trial is a test of the model: before it ran, the model predicted the
    target value ``m_i`` with standard deviation ``sigma_i`` (``isbo:predicted_value_at_target``
    and ``isbo:predicted_std_at_target``); then ``y_i`` was observed. For a calibrated model
    ``z_i = (y_i - m_i) / sigma_i`` has unit variance (a little more, from the observation
    noise). The factor

    .. math::

        \kappa = \max\left(1, \sqrt{\tfrac{1}{k} \sum_i z_i^2}\right)

    widens the model's target uncertainty by what these checks showed: a fidelity kernel that
    declared a biased cheap fidelity nearly exact predicts the target with a small ``sigma``
    and misses by many of them, and its extrapolations should not be trusted as stated.

    Parameters
    ----------
    observed, predicted, predicted_std
        ``(k,)`` observed values, predictions and their standard deviations, in one unit.

    Returns
    -------
    float
        ``kappa`` in ``[1, 1000]``; 1 without checks.
    """
    ok = torch.isfinite(observed) & torch.isfinite(predicted) & (predicted_std > 0)
    if not bool(ok.any()):
        return 1.0
    z = (observed[ok] - predicted[ok]) / predicted_std[ok]
    return float(z.square().mean().sqrt().clamp(1.0, 1000.0))


def small_sample_factor(n_observations: int) -> float:
    r"""Widening of a Gaussian interval for a GP whose scale was estimated from ``n`` values.

    The model standardizes the observations and fits the kernel's output scale to them, then
    reports Gaussian intervals as if that scale were known. With the scale unknown under the
    usual reference prior (``p(sigma^2) \propto 1 / sigma^2``) and a constant mean fitted
    too, the predictive distribution is a Student-t with ``nu = n - 1`` degrees of freedom
    (O'Hagan, "Curve fitting and optimal design for prediction", JRSS B 1978; Santner et al.,
    "The Design and Analysis of Computer Experiments", 2003, sec. 4.1). The factor

    .. math::

        c(n) = t_{n - 1}^{-1}(0.9) \, / \, \Phi^{-1}(0.9)

    widens the standard deviation so that the reported 80 % interval is the t interval:
    1.28 for ``n = 4``, 1.15 for 6, 1.05 for 15, tending to 1. Below
    ``MIN_MODEL_OBSERVATIONS = 4`` (``nu <= 2``) the t has no variance, so no standard
    deviation describes it: the recommendation then goes by observed values.

    Parameters
    ----------
    n_observations
        Number of observations the model was fitted to.
    """
    nu = max(int(n_observations) - 1, 1)
    return float(scipy.stats.t.ppf(0.9, nu)) / Z_80


def verification_due(
    verify_cost_seconds: float, total_cost_seconds: float, max_fraction: float
) -> bool:
    """Whether the budget of verification trials allows another one.

    Parameters
    ----------
    verify_cost_seconds
        Cost of the completed verification trials.
    total_cost_seconds
        Cost of all completed trials.
    max_fraction
        ``rho``: the share of the cost that verification trials may take.
    """
    if max_fraction <= 0.0 or total_cost_seconds <= 0.0:
        return False
    return verify_cost_seconds < max_fraction * total_cost_seconds


def is_target(s: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``(n,)`` of fidelities ``s`` that are the target."""
    return s >= TARGET_S
