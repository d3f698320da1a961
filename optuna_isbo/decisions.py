r"""The sampler's decisions: which search proposes a trial, what to verify, what to hand back.

:class:`~optuna_isbo.ISBOSampler` runs two searches side by side.

* **The target search** (:mod:`optuna_isbo.target_search`): Optuna's ``GPSampler`` on the trials
  evaluated at the target fidelity. It is the search a user would run without a fidelity, so a
  study that gives it a share ``1 - rho`` of its cost is, at worst, that search at ``1 - rho``
  of the budget, whatever the cheap fidelities do.
* **The multi-fidelity search** (:mod:`optuna_isbo.acquisition`): information about the optimum
  at the target per second of expected cost, over ``(x, s)``, with verification of its beliefs
  at the target. Its target evaluations feed the target search as well.

:func:`search_at_target` splits the cost between them. The multi-fidelity search (its startup
design, its model-chosen trials and its verifications) proposes the next trial while it has
spent at most its share of what the two searches have spent so far; otherwise the target
search does. Trials the user enqueued are charged to neither search, and a cost more than
``1e4`` times the median counts as that, as the cost model clips it. The share
(:func:`mf_share`) is ``rho`` (``mf_cost_fraction``) until verifications have tested the
model's predictions at the target; while they pass, it grows towards 0.8, and where they
failed (the predictions missed by more than their stated uncertainty,
:mod:`optuna_isbo.recommendation`) the cheap fidelities misled the model, the share is 0 and
the target search proposes every trial. The split is a hedge, not a bet:
a cheap fidelity that predicts the target gives the target search scouted configurations at a
fraction of their price; one that misleads costs at most ``rho`` of the budget before the
checks stop it.

Verification (:func:`verification_candidate`), the calibration factor of the checks
(:func:`calibration_checks`) and the recommendation (:func:`choose_recommendation`) are the
other decisions made from the model, and live here too.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

from optuna_isbo import recommendation as rec
from optuna_isbo.constraints import (
    ConstraintModel,
    constraint_keys,
    constraint_values,
    observed_feasible,
)
from optuna_isbo.cost import MIN_COST_SECONDS
from optuna_isbo.model import _LOG_COST_WINDOW, GPModel, condition, tame_outliers
from optuna_isbo.recommendation import Recommendation
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ATTR_PREFIX, ran_in_full

#: ``isbo:phase`` of the trials proposed by the target search.
TARGET_PHASE = "target"
#: ``isbo:phase`` of the trials whose parameters the user fixed (``study.enqueue_trial``).
ENQUEUED_PHASE = "enqueued"
#: Phases of the trials neither search proposed: enqueued ones, and those without a phase.
USER_PHASES: tuple[object, ...] = (ENQUEUED_PHASE, None)
#: The largest share of the cost the multi-fidelity search takes once its checks have passed.
TRUSTED_MF_COST_FRACTION = 0.8


def mf_share(rule: rec.Rule, n_checks: int, mf_cost_fraction: float) -> float:
    r"""The share of the cost the multi-fidelity search may take, given the checks so far.

    ``rho`` (``mf_cost_fraction``) until the verifications say something. Each verification
    is a held-out test of what the cheap runs predict at the target; while they pass (rule
    ``"extrapolate"``), the share grows with their number ``k`` towards ``max(rho, 0.8)``,

    .. math::

        \rho_k = \rho + (\max(\rho, 0.8) - \rho)\,(1 - 2^{-k}),

    so the target search keeps a fifth of the cost however well the cheap runs predicted.
    Once they failed (rule ``"observed"``) the share is 0: the target search proposes every
    trial.
    """
    if rule == "observed":
        return 0.0
    if rule == "extrapolate":
        trusted = max(mf_cost_fraction, TRUSTED_MF_COST_FRACTION)
        return mf_cost_fraction + (trusted - mf_cost_fraction) * (1.0 - 0.5**n_checks)
    return mf_cost_fraction


def sanitized_costs(cost_seconds: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(n,)`` costs in seconds as the budget is charged: an absurd cost clipped.

    A cost more than a factor ``1e4`` above the median of the measured costs (those above
    the floor ``MIN_COST_SECONDS``, which only says that nothing was measured) counts as
    ``1e4`` times that median: the upper end of the window in which
    :func:`~optuna_isbo.model.fit_cost_model` keeps log costs. One absurd cost (a unit
    mistake, ``1e300`` s) would otherwise outweigh every other trial in the split of the
    cost between the searches (:func:`search_at_target`) and in the verification budget
    (:func:`verification_candidate`) for the rest of the study. Cheap costs are charged as
    they are (a cheap trial cannot distort the split). Returns a CPU tensor, whatever the
    default device.
    """
    values = cost_seconds.tolist() if isinstance(cost_seconds, torch.Tensor) else cost_seconds
    costs = [float(c) for c in values]
    measured = sorted(math.log(c) for c in costs if c > MIN_COST_SECONDS)
    if measured:
        # The lower median, as ``torch.median`` takes it in the cost model.
        ceiling = math.exp(measured[(len(measured) - 1) // 2] + _LOG_COST_WINDOW)
        costs = [min(c, ceiling) for c in costs]
    return torch.tensor(costs, dtype=torch.float64, device="cpu")


def split_costs(
    cost_seconds: Sequence[float] | torch.Tensor, at_target: Sequence[bool] | None = None
) -> torch.Tensor:
    """``(n,)`` costs in seconds as the split between the searches charges them.

    :func:`sanitized_costs`, and a run below the target charged at most what the dearest run
    at the target cost (``at_target`` marks those; no cap while none has run). The fidelity
    is a parameter where larger is dearer: a cheap run that cost more than any target run
    met something the fidelity does not explain (a stalled machine, a queue, a cold cache),
    and charged in full it would hand every later trial to the target search until the
    target search had spent as much.
    """
    costs = sanitized_costs(cost_seconds)
    if at_target is None:
        return costs
    mask = torch.tensor(list(at_target), dtype=torch.bool)
    if bool(mask.any()) and not bool(mask.all()):
        ceiling = costs[mask].max()
        costs = torch.where(mask, costs, costs.clamp_max(ceiling))
    return costs


def search_at_target(
    phases: Sequence[object],
    cost_seconds: Sequence[float],
    share: float,
    at_target: Sequence[bool] | None = None,
) -> bool:
    """Whether the target search proposes the next trial.

    Each search is charged for the trials it proposed: the target search for those of phase
    ``"target"``, the multi-fidelity search for its startup design, model, verification and
    fallback trials (every other phase). Trials the user chose (``"enqueued"``, and trials
    without a phase: added with ``study.add_trial`` or proposed by another sampler) are
    charged to neither: they are the user's spend, and charging them to one search would
    hand the next trials to the other. An absurd cost is first clipped to ``1e4`` times the
    median cost, as the cost model clips it, and a cheap run charged at most what the dearest
    target run cost (:func:`split_costs`).

    Parameters
    ----------
    phases
        ``isbo:phase`` of each completed trial (``None`` where absent).
    cost_seconds
        Cost of each completed trial, in seconds.
    share
        The share of the cost the multi-fidelity search may take (:func:`mf_share`).
    at_target
        Whether each completed trial ran at the target fidelity; no cap on cheap runs'
        charges when ``None``.

    Returns
    -------
    bool
        ``True`` when the multi-fidelity search's trials cost more than ``share`` of what the
        two searches' trials cost together (always when ``share`` is 0).
    """
    costs = split_costs(cost_seconds, at_target).tolist()
    own = [(p, c) for p, c in zip(phases, costs, strict=True) if p not in USER_PHASES]
    total = float(sum(c for _, c in own))
    mf = float(sum(c for p, c in own if p != TARGET_PHASE))
    return share <= 0.0 or mf > share * total


def verification_candidate(
    space: SearchSpace,
    fit: ObjectiveFit,
    cost_seconds: torch.Tensor,
    verifying: torch.Tensor,
    pending: torch.Tensor,
    verify_cost_fraction: float,
    feasibility: ConstraintModel | None = None,
) -> torch.Tensor | None:
    """The configuration to evaluate at the target next, or ``None``.

    The configuration with the lowest posterior mean at the target among those evaluated
    (and, with constraints, feasible there with probability at least 1/2 under
    ``feasibility``), when it has no target evaluation (completed or pending) and the
    verification trials (mask ``verifying``, ``(n,)``) have cost less than
    ``verify_cost_fraction`` of the cost so far (``cost_seconds``, ``(n,)``). ``pending`` is
    ``(m, D)``, model inputs of the running trials. An absurd cost is clipped to ``1e4`` times
    the median cost, as the cost model clips it (:func:`sanitized_costs`).
    """
    if space.fidelity_param is None or verify_cost_fraction <= 0.0:
        return None
    s = fit.inputs[:, -1]
    cost_seconds = sanitized_costs(cost_seconds)
    verify_seconds = float(cost_seconds[verifying].sum())
    total_seconds = float(cost_seconds.sum())
    if not rec.verification_due(verify_seconds, total_seconds, verify_cost_fraction):
        return None
    configs = rec.group_configurations(fit.inputs[:, : space.dim], s)
    ones = torch.ones(configs.X.shape[0], dtype=torch.float64)
    # The mean alone (``O(n^2)``; the variances of every configuration would be ``O(n^3)``).
    mean = fit.model.mean(model_inputs(space, configs.X, ones))
    if feasibility is not None:
        ok = feasibility.probability(model_inputs(space, configs.X, ones)) >= 0.5
        if not bool(ok.any()):
            return None
        mean = torch.where(ok, mean, math.inf)
    k = int(mean.argmin())
    if int(configs.n_target[k]) > 0:
        return None
    x = configs.X[k]
    if pending.shape[0] > 0:
        # A running trial already verifying it (its parameters went through decode and
        # encode again, which may move a log-scale value in the last bits).
        at_target = pending[rec.is_target(pending[:, -1]), : space.dim]
        if bool(((at_target - x).abs() <= 1e-9).all(dim=1).any()):
            return None
    return x


@dataclasses.dataclass(frozen=True)
class ObjectiveFit:
    """The objective GP, its inputs ``(n, D)`` and the map back to objective units.

    The GP models ``(sign * value - shift) / scale`` with ``sign = -1`` for a maximized study.
    """

    model: GPModel
    inputs: torch.Tensor
    shift: float
    scale: float
    target_only: bool = False

    def value_of(self, z: float, study: Study) -> float:
        """Objective value, in the study's units and direction, of a model value ``z``."""
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        return sign * (self.shift + self.scale * z)


def target_posterior(
    fit: ObjectiveFit, space: SearchSpace, X: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation ``(k,)`` at the target, in minimized units."""
    inputs = model_inputs(space, X, torch.ones(X.shape[0], dtype=torch.float64))
    mean, var = fit.model.mean_var(inputs)
    return fit.shift + fit.scale * mean, fit.scale * var.sqrt()


def extrapolation_factor(fit: ObjectiveFit) -> float:
    r"""Calibration of the model's extrapolation along the fidelity, tested on the cheap runs.

    Before the first verification trial nothing has tested how the model extrapolates to the
    target, yet a recommendation made before any target evaluation rests on that alone. The
    cheap runs test the same kind of extrapolation one step down: the model, with its
    hyperparameters as fitted, conditioned on the runs below the highest cheap fidelity
    observed, ``s_top < 1``, predicts the runs at ``s_top``. With ``m_i`` and ``v_i`` the
    posterior mean and variance of the latent value at such a run and ``sigma_0^2(s_top)``
    the noise variance there, ``z_i = (y_i - m_i) / sqrt(v_i + sigma_0^2)`` has unit variance
    for a calibrated model, and the factor is
    :func:`~optuna_isbo.recommendation.calibration_factor` of these ``z_i``,
    ``max(1, sqrt(mean z_i^2))``. On learning curves that keep improving, for example, the
    runs at ``s_top`` are better than the lower fidelities made the model expect, and so is the
    target.

    Parameters
    ----------
    fit
        The objective GP; the last input column is the fidelity.

    Returns
    -------
    float
        The factor in ``[1, 1000]``; 1 when there is nothing to test (fewer than two runs below
        ``s_top``, or no cheap run).
    """
    model = fit.model
    s = model.X[:, -1]
    cheap = ~rec.is_target(s)
    if not bool(cheap.any()):
        return 1.0
    s_top = float(s[cheap].max())
    held = cheap & (s >= s_top - 1e-9)
    below = s < s_top - 1e-9
    if int(below.sum()) < 2:
        return 1.0
    with torch.no_grad():
        try:
            reduced = condition(
                model.X[below],
                model.y[below],
                model.params,
                model.has_fidelity,
                model.heteroscedastic,
                model.mean_fn,
            )
        except torch.linalg.LinAlgError:
            return 1.0
        A = model.X[held]
        mean, var = reduced.mean_var(A)
        std = (var + reduced.noise_var(A)).sqrt()
        return rec.calibration_factor(model.y[held], mean, std)


def calibrated_std(
    fit: ObjectiveFit,
    std: torch.Tensor,
    n_target: torch.Tensor,
    kappa: float,
    n_checks: int,
) -> torch.Tensor:
    """The posterior standard deviations ``(k,)`` at the target, widened as reported.

    First by :func:`~optuna_isbo.recommendation.small_sample_factor` of the fit's
    observations (the output scale was fitted, not known); then, for a model that learned
    from cheap trials, by ``kappa`` once verification trials have checked it, or before any
    check by :func:`extrapolation_factor` for the configurations without a target evaluation
    (``n_target (k,)``). A GP of the target trials alone (``fit.target_only``) is not widened
    by either: they measured the model of the cheap trials.
    """
    std = std * rec.small_sample_factor(fit.model.X.shape[0])
    if fit.target_only or not fit.model.has_fidelity:
        return std
    if n_checks > 0:
        return std * kappa
    # Nothing has checked the extrapolation to the target yet (on LCBench, recommendations
    # made this way covered the truth with their 80 % interval 62 % of the time before this
    # widening; benchmarks/RESULTS.md).
    unchecked = n_target == 0
    if not bool(unchecked.any()):
        return std
    return torch.where(unchecked, std * extrapolation_factor(fit), std)


def calibration_checks(completed: list[FrozenTrial], study: Study) -> tuple[float, int, rec.Rule]:
    """``kappa``, the number of verification trials behind it, and the rule they set."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    kappa, n_checks = _calibration_factor(completed, sign)
    return kappa, n_checks, rec.recommendation_rule(kappa, n_checks)


def _calibration_factor(completed: list[FrozenTrial], sign: float) -> tuple[float, int]:
    """:func:`~optuna_isbo.recommendation.calibration_factor` over the verification trials.

    A verification evaluates at the target a configuration the model knew from cheaper
    fidelities only, so its prediction tests exactly the extrapolation from cheap to target
    runs. (A model-chosen trial at the target is not counted: near other target evaluations the
    model can predict well while its extrapolations stay wrong.) Predictions and values are
    compared in minimized units (``sign = -1`` when maximizing). Returns the factor and the
    number of verification trials behind it.
    """
    checks = []
    for t in completed:
        attrs = t.user_attrs
        if attrs.get(ATTR_PREFIX + "phase") != "verify":
            continue
        predicted = attrs.get(ATTR_PREFIX + "predicted_value_at_target")
        std = attrs.get(ATTR_PREFIX + "predicted_std_at_target")
        if isinstance(predicted, int | float) and isinstance(std, int | float):
            checks.append((sign * t.values[0], sign * float(predicted), float(std)))
    if not checks:
        return 1.0, 0
    observed, predicted, std = torch.tensor(checks, dtype=torch.float64).T
    return rec.calibration_factor(observed, predicted, std), len(checks)


@dataclasses.dataclass(frozen=True)
class TargetEvidence:
    """Posterior at the target of the evaluated configurations, calibrated.

    ``n_checks`` verification trials measured ``kappa``, from which ``rule`` follows. ``std``
    is already widened as reported (:func:`calibrated_std`); under the rule ``"observed"`` the
    posterior is that of a GP fitted to the target trials alone.
    ``feasibility`` ``(k,)`` is each configuration's probability of feasibility at the target
    (the observed share of feasible target evaluations among those with every constraint value
    known, where it has some, else the constraint GPs'; :func:`feasibility_of_configurations`);
    ``None`` without constraints.
    """

    configs: rec.Configurations
    mean: torch.Tensor
    std: torch.Tensor
    kappa: float
    n_checks: int
    rule: rec.Rule
    feasibility: torch.Tensor | None = None


#: A configuration is a candidate in a constrained study when at least this likely feasible.
MIN_FEASIBILITY = 0.5


@dataclasses.dataclass(frozen=True)
class _Observations:
    """What the completed trials observed, each an ``(n,)`` tensor.

    ``s`` are the fidelities (ones without a fidelity axis). ``y`` are the values in
    minimized units, a diverged run (``isbo:diverged``) counted no better than the worst
    other value (:func:`~optuna_isbo.model.tame_outliers`; a value above the outlier fence is
    kept as observed); ``changed`` marks the values the model saw changed (fenced, or a
    diverged run set to the worst value). ``exact`` numbers each trial's exact configuration:
    its configuration in the joint search space and the values of its parameters outside it
    (a conditional parameter, one whose range changed). With constraints, ``feasible`` (every
    value known and ``<= 0``), ``known`` (every value known) and ``violation`` (the sum of
    the positive parts, NaN where a value is missing); ``None`` without.
    """

    s: torch.Tensor
    y: torch.Tensor
    changed: torch.Tensor
    exact: torch.Tensor
    feasible: torch.Tensor | None
    known: torch.Tensor | None
    violation: torch.Tensor | None


def _observations(
    study: Study, space: SearchSpace, completed: list[FrozenTrial], *, quiet: bool
) -> _Observations:
    """:class:`_Observations` of ``completed``; ``quiet`` silences the constraint warnings."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    X, s = space.encode_trials(completed)
    if space.fidelity_param is None:
        s = torch.ones(len(completed), dtype=torch.float64)
    y = torch.tensor([sign * t.values[0] for t in completed], dtype=torch.float64)
    tamed = tame_outliers(y, torch.tensor([not ran_in_full(t) for t in completed]))
    # An exact configuration is a model configuration (the encoded joint-space parameters,
    # which a value moved in its last bits by a decode and encode keeps) and the values of
    # the parameters outside the joint search space.
    group = rec.group_configurations(X, s).index.tolist()
    inside = {*space.names, space.fidelity_param}
    ids: dict[tuple[object, ...], int] = {}
    exact = torch.tensor(
        [
            ids.setdefault(
                (
                    g,
                    *sorted(
                        (k, type(v).__name__, v) for k, v in t.params.items() if k not in inside
                    ),
                ),
                len(ids),
            )
            for g, t in zip(group, completed, strict=True)
        ],
        dtype=torch.long,
    )
    feasible = known = violation = None
    keys = constraint_keys(completed)
    if keys:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore", RuntimeWarning)
            C = constraint_values(completed, keys)
        feasible = observed_feasible(C)
        known = ~torch.isnan(C).any(dim=1)
        violation = C.clamp_min(0.0).sum(dim=1)
    return _Observations(
        s=s,
        y=torch.maximum(y, tamed),
        changed=tamed != y,
        exact=exact,
        feasible=feasible,
        known=known,
        violation=violation,
    )


def choose_recommendation(
    study: Study,
    space: SearchSpace,
    completed: list[FrozenTrial],
    evidence: TargetEvidence | None,
    rule: rec.Rule | None,
) -> Recommendation:
    """The recommendation under ``rule`` (:func:`~optuna_isbo.recommendation.recommendation_rule`).

    ``completed`` are the trials at or below the target fidelity
    (:func:`~optuna_isbo.trials.runs_up_to_target`). The model ranks configurations of the
    joint search space; two rules decide when it cannot, and the recommendation then goes by
    what was observed:

    * **Exact configurations, ranked by what they observed.** Without a model (``evidence``
      is ``None``: a single trial, a failed fit), and whenever trials of one model
      configuration differ in parameters outside the joint search space (fidelity aside: a
      conditional parameter, a parameter whose range changed), the model's posterior
      describes a mixture it cannot take apart. The candidates are then the exact
      configurations (a configuration of the joint search space with the values of the
      parameters outside it) evaluated at the target, or at the highest fidelity observed
      while none is, ranked by their mean observed value there (a
      diverged run counted no better than the worst other value). The value reported is
      that mean, with ``std`` NaN, and ``n_target_evaluations`` the exact configuration's own;
      a value observed below the target is labelled as such (``observed_at``), not as a
      prediction at the target.
    * **Outliers are ranked as they are reported.** A configuration whose target values the
      model saw pulled in to the outlier fence (:func:`~optuna_isbo.model.tame_outliers`) is
      reported at its observed mean (``std`` NaN), and ranked by that mean too, with no
      uncertainty: a spike among its runs cannot make it look better than it was.

    Otherwise the candidates are ranked by the model under ``rule``: the configurations
    evaluated at the target (every configuration while none is; under ``"observed"`` the best
    observed there). In a constrained study
    the candidates are those feasible at the target with probability at least 1/2: the share
    of their target evaluations observed feasible (every constraint value known and
    ``<= 0``; a trial lacking a value is not evidence of feasibility), else the constraint
    model's (``evidence.feasibility``); for exact configurations, the share of their own
    evaluations. When none is, a configuration known from cheap runs that the constraint
    model expects feasible is preferred; failing that, a :class:`RuntimeWarning` says that no
    feasible configuration was found, and the recommendation is the configuration with the
    smallest mean total violation observed at the target (sum of the positive constraint
    values; the highest model probability of feasibility where none has a target evaluation
    with every constraint value known). The parameters returned are those of the
    configuration's best trial, target evaluations and trials observed feasible first.
    """
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    obs = _observations(study, space, completed, quiet=evidence is not None)
    if evidence is None or _mixes_configurations(evidence.configs.index, obs.exact):
        return _recommend_observed(obs, completed, space, sign)
    configs = evidence.configs
    at_target = rec.is_target(obs.s)
    fenced, observed_mean = _fenced_configurations(configs, at_target, obs)
    mean = torch.where(fenced, observed_mean, evidence.mean)
    std = torch.where(fenced, 0.0, evidence.std)
    y = obs.y
    observed = rule == "observed" and bool(at_target.any())
    # Once a configuration has a target evaluation, one known from cheap runs only is not a
    # candidate, whatever the checks said: the lowest upper bound among many extrapolations
    # is the most optimistic one (on LCBench, 1,276 such recommendations after passed checks
    # covered the truth with their 80 % interval 14 % of the time, with a median miss of 5.7
    # standard deviations; benchmarks/RESULTS.md). The verification trials evaluate the
    # configuration the model believes best at the target, which then becomes a candidate.
    extrapolate = False
    k: int | None = None
    if evidence.feasibility is not None:
        feasibility = evidence.feasibility
        if observed or bool((configs.n_target > 0).any()):
            candidates = configs.n_target > 0
        else:
            candidates = torch.ones_like(configs.n_target, dtype=torch.bool)
        eligible = candidates & (feasibility >= MIN_FEASIBILITY)
        if not bool(eligible.any()):
            # No candidate is likely feasible: a configuration known from cheap runs that is
            # likely feasible at the target beats one seen infeasible there, ranked by the
            # model; failing that, the least violating configuration.
            observed, extrapolate = False, True
            eligible = feasibility >= MIN_FEASIBILITY
            if not bool(eligible.any()):
                _warn_nothing_feasible()
                k = _least_violating(
                    configs.index, at_target, obs, mean + rec.Z_80 * std, feasibility
                )
        mean = torch.where(eligible, mean, math.inf)
        y = torch.where(eligible[configs.index], y, math.inf)
    if k is None:
        if observed:
            k = rec.best_observed_at_target(configs, obs.s, y)
        else:
            k = rec.choose_supported(mean, std, configs.n_target, extrapolate=extrapolate)
    # The posterior mean, not the observed value: the best of several noisy target values
    # is biased low, and the posterior's standard deviation is about the latent value.
    value, sd = sign * float(evidence.mean[k]), float(evidence.std[k])
    if bool(fenced[k]):
        # The model saw this configuration's target values pulled in to the outlier fence:
        # its posterior describes the fence, not the configuration. Report what was observed
        # (what it was ranked by), and no model uncertainty.
        value, sd = sign * float(observed_mean[k]), math.nan
    best = _best_member(configs.index == k, at_target, obs.y, obs.feasible)
    return _recommendation(
        completed[best],
        space,
        value=value,
        std=sd,
        n_target=int(configs.n_target[k]),
        feasibility=None if evidence.feasibility is None else float(evidence.feasibility[k]),
    )


def _mixes_configurations(index: torch.Tensor, exact: torch.Tensor) -> bool:
    """Whether some model configuration (``index (n,)``) holds several exact ones (``exact``)."""
    if index.numel() == 0:
        return False
    pairs = torch.unique(torch.stack([index, exact]), dim=1)
    return pairs.shape[1] > torch.unique(index).numel()


def _recommend_observed(
    obs: _Observations, completed: list[FrozenTrial], space: SearchSpace, sign: float
) -> Recommendation:
    """The exact configuration with the best mean observed value (:func:`choose_recommendation`).

    Observed at the target, or at the highest fidelity observed while nothing is; in a
    constrained study among the exact configurations observed feasible there at least half
    the time (their known evaluations), else the least violating one, with a warning.
    """
    at_target = rec.is_target(obs.s)
    pool = at_target if bool(at_target.any()) else obs.s >= obs.s.max()
    m = int(obs.exact.max()) + 1
    mean = _group_mean(obs.exact, m, obs.y, pool)
    p_feasible: torch.Tensor | None = None
    if obs.feasible is None or obs.known is None:
        e = int(mean.argmin())
    else:
        p_feasible = _group_mean(
            obs.exact, m, obs.feasible.double(), pool & obs.known, empty=math.nan
        )
        likely = p_feasible >= MIN_FEASIBILITY
        if bool(likely.any()):
            e = int(torch.where(likely, mean, math.inf).argmin())
        else:
            _warn_nothing_feasible()
            e = _least_violating(obs.exact, pool, obs, mean, None)
    members = (obs.exact == e) & pool
    best = _best_member(members, at_target, obs.y, obs.feasible)
    trial = completed[best]
    observed_at = None
    if not bool(at_target.any()) and space.fidelity_param is not None:
        observed_at = {space.fidelity_param: trial.params[space.fidelity_param]}
    return _recommendation(
        trial,
        space,
        value=sign * float(mean[e]),
        std=math.nan,
        n_target=int(((obs.exact == e) & at_target).sum()),
        feasibility=None if p_feasible is None else float(p_feasible[e]),
        observed_at=observed_at,
    )


def _recommendation(
    trial: FrozenTrial,
    space: SearchSpace,
    *,
    value: float,
    std: float,
    n_target: int,
    feasibility: float | None,
    observed_at: dict[str, Any] | None = None,
) -> Recommendation:
    """The :class:`Recommendation` of ``trial``'s parameters, the fidelity at the target."""
    params = dict(trial.params)
    if space.fidelity_param is not None:
        params[space.fidelity_param] = space.unit_to_fidelity(1.0)
    return Recommendation(
        params=params,
        value=value,
        std=std,
        trial_number=trial.number,
        n_target_evaluations=n_target,
        feasibility_probability=feasibility,
        observed_at=observed_at,
    )


def _fenced_configurations(
    configs: rec.Configurations, at_target: torch.Tensor, obs: _Observations
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which configurations had target values changed by the outlier fence, and their means.

    Returns ``(k,)`` masks of the configurations whose target values reached the model
    changed (:func:`~optuna_isbo.model.tame_outliers`: fenced, or diverged), and ``(k,)``
    their mean observed target values (``obs.y``; ``inf`` where a configuration has no target
    evaluation).
    """
    k = configs.X.shape[0]
    changed = torch.zeros(k, dtype=torch.bool)
    changed[configs.index[at_target & obs.changed]] = True
    return changed, _group_mean(configs.index, k, obs.y, at_target)


def _warn_nothing_feasible() -> None:
    warnings.warn(
        "No evaluated configuration is likely feasible at the target (none observed feasible "
        "there, and none the constraint model expects feasible): the recommendation is the "
        "configuration with the smallest observed constraint violation.",
        RuntimeWarning,
        stacklevel=4,
    )


def _least_violating(
    index: torch.Tensor,
    pool: torch.Tensor,
    obs: _Observations,
    tie_break: torch.Tensor,
    probability: torch.Tensor | None,
) -> int:
    """The configuration with the smallest mean total violation observed in ``pool``.

    ``index (n,)`` maps the trials to ``k`` configurations; ``pool (n,)`` marks the
    evaluations that count (those at the target). Only evaluations with every constraint
    value known count. Where no configuration has one, the highest ``probability (k,)`` of
    feasibility decides (every configuration ties without it). Ties go to the lowest
    ``tie_break (k,)``, ``inf`` for configurations that are not candidates.
    """
    assert obs.known is not None and obs.violation is not None
    k = tie_break.shape[0]
    violation = _group_mean(index, k, obs.violation, pool & obs.known)
    if bool(torch.isfinite(violation).any()):
        tied = violation <= violation.min()
    elif probability is not None:
        tied = probability >= probability.max()
    else:
        tied = torch.ones(k, dtype=torch.bool)
    return int(torch.where(tied, tie_break, math.inf).argmin())


def _best_member(
    members: torch.Tensor,
    at_target: torch.Tensor,
    y: torch.Tensor,
    feasible: torch.Tensor | None = None,
) -> int:
    """Index of the best trial among ``members (n,)``: target evaluations first, then trials
    observed feasible (``feasible (n,)``), then the lowest ``y (n,)``."""
    pool = members & at_target if bool((members & at_target).any()) else members
    if feasible is not None and bool((pool & feasible).any()):
        pool = pool & feasible
    finite_y = torch.where(torch.isfinite(y), y, torch.finfo(y.dtype).max)
    return int(torch.where(pool, finite_y, math.inf).argmin())


def feasibility_of_configurations(
    configs: rec.Configurations,
    s: torch.Tensor,
    feasible: torch.Tensor,
    model_probability: torch.Tensor,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(k,)`` probability of feasibility at the target of each configuration.

    The share of its target evaluations observed feasible (``feasible`` ``(n,)``, ``s``
    ``(n,)``) among those whose constraint values are all known (``known`` ``(n,)``; all of
    them when ``None``), where it has some; otherwise ``model_probability`` ``(k,)`` of the
    constraint GPs. A target evaluation that lacks a constraint value is no evidence either
    way: a configuration evaluated at the target only without its constraints gets the
    model's probability, not 1.
    """
    counted = rec.is_target(s)
    if known is not None:
        counted = counted & known
    share = _group_mean(
        configs.index, configs.X.shape[0], feasible.double(), counted, empty=math.nan
    )
    return torch.where(share.isnan(), model_probability, share)


def _group_mean(
    index: torch.Tensor,
    k: int,
    values: torch.Tensor,
    mask: torch.Tensor,
    empty: float = math.inf,
) -> torch.Tensor:
    """``(k,)`` mean of ``values (n,)`` over the rows in ``mask (n,)`` of each group.

    ``index (n,)`` maps each row to one of ``k`` groups; a group with no row in ``mask`` gets
    ``empty``.
    """
    n = torch.zeros(k, dtype=torch.float64).scatter_add(0, index, mask.double())
    total = torch.zeros(k, dtype=torch.float64).scatter_add(
        0, index, torch.where(mask, values, 0.0)
    )
    return torch.where(n > 0, total / n.clamp_min(1.0), empty)


def model_inputs(space: SearchSpace, X: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Model inputs ``(n, D)``: ``x`` columns, then ``s`` when the space has a fidelity axis."""
    if space.fidelity_param is None:
        return X
    return torch.cat([X, s[:, None]], dim=1)
