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
search does. Trials the user enqueued are charged to neither search, and costs are clipped to
a factor ``1e4`` around their median, as the cost model clips them. The share
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
from collections.abc import Sequence

import torch
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial

from optuna_isbo import recommendation as rec
from optuna_isbo.constraints import ConstraintModel
from optuna_isbo.cost import MIN_COST_SECONDS
from optuna_isbo.model import _LOG_COST_WINDOW, GPModel, tame_outliers
from optuna_isbo.recommendation import Recommendation
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ran_in_full

ATTR_PREFIX = "isbo:"
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
    """``(n,)`` costs in seconds as the budget is charged: clipped as the cost model clips them.

    Costs more than a factor ``1e4`` above or below the median of ``cost_seconds`` ``(n,)``
    are clipped to that factor, the window in which
    :func:`~optuna_isbo.model.fit_cost_model` keeps log costs. One absurd cost (a unit
    mistake, ``1e300`` s) would otherwise outweigh every other trial in the split of the cost
    between the searches (:func:`search_at_target`) and in the verification budget
    (:func:`verification_candidate`) for the rest of the study; clipped, it counts as ``1e4``
    median trials.
    """
    costs = torch.as_tensor(cost_seconds, dtype=torch.float64).reshape(-1)
    if costs.numel() == 0:
        return costs
    log_cost = costs.clamp_min(MIN_COST_SECONDS).log()
    median = float(log_cost.median())
    return log_cost.clamp(median - _LOG_COST_WINDOW, median + _LOG_COST_WINDOW).exp()


def search_at_target(
    phases: Sequence[object],
    cost_seconds: Sequence[float],
    share: float,
) -> bool:
    """Whether the target search proposes the next trial.

    Each search is charged for the trials it proposed: the target search for those of phase
    ``"target"``, the multi-fidelity search for its startup design, model, verification and
    fallback trials (every other phase). Trials the user chose (``"enqueued"``, and trials
    without a phase: added with ``study.add_trial`` or proposed by another sampler) are
    charged to neither: they are the user's spend, and charging them to one search would
    hand the next trials to the other. Costs are first clipped as the cost model clips them
    (:func:`sanitized_costs`).

    Parameters
    ----------
    phases
        ``isbo:phase`` of each completed trial (``None`` where absent).
    cost_seconds
        Cost of each completed trial, in seconds.
    share
        The share of the cost the multi-fidelity search may take (:func:`mf_share`).

    Returns
    -------
    bool
        ``True`` when the multi-fidelity search's trials cost more than ``share`` of what the
        two searches' trials cost together (always when ``share`` is 0).
    """
    costs = sanitized_costs(cost_seconds).tolist()
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
    ``(m, D)``, model inputs of the running trials. Costs are clipped as the cost model clips
    them (:func:`sanitized_costs`).
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
    is already widened by ``kappa``, except under the rule ``"observed"``: the posterior is
    then that of a GP fitted to the target trials alone. ``feasibility`` ``(k,)`` is each
    configuration's probability of feasibility at the target (the observed share of feasible
    target evaluations among those with every constraint value known, where it has some, else
    the constraint GPs'; :func:`feasibility_of_configurations`); ``None`` without constraints.
    """

    configs: rec.Configurations
    mean: torch.Tensor
    std: torch.Tensor
    kappa: float
    n_checks: int
    rule: rec.Rule
    feasibility: torch.Tensor | None = None


def choose_recommendation(
    study: Study,
    space: SearchSpace,
    completed: list[FrozenTrial],
    evidence: TargetEvidence | None,
    rule: rec.Rule | None,
    feasible: torch.Tensor | None = None,
) -> Recommendation:
    """The recommendation under ``rule`` (:func:`~optuna_isbo.recommendation.recommendation_rule`).

    Without a model (``evidence`` is ``None``), the best value observed at the highest fidelity.
    In a constrained study the candidates are the configurations feasible at the target with
    probability at least 1/2 (``evidence.feasibility``; without a model, the trials observed
    feasible, ``feasible (n,)``), as long as there is one. The parameters are those of the
    configuration's best trial, preferring target evaluations: parameters outside the joint
    search space (conditional ones, a range that changed) then come from one real run. Where
    such parameters differ among the configuration's trials, the model cannot tell them apart;
    the value and the number of target evaluations are then those of the exact parameters
    returned (their mean observed target value, with ``std`` NaN).
    """
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    X, s = space.encode_trials(completed)
    if space.fidelity_param is None:
        s = torch.ones(X.shape[0], dtype=torch.float64)
    y = torch.tensor([sign * t.values[0] for t in completed], dtype=torch.float64)
    y_raw = y.clone()
    p_feasible: float | None = None
    if evidence is None:
        eligible = s >= s.max()
        if feasible is not None and bool((eligible & feasible).any()):
            eligible = eligible & feasible
        best = int(torch.where(eligible, y, math.inf).argmin())
        trial = completed[best]
        value, std = float(trial.values[0]), math.nan
        n_target = int((rec.is_target(s) & _same_run(completed, best, space)).sum())
        if feasible is not None:
            p_feasible = float(feasible[best])
    else:
        configs = evidence.configs
        mean = evidence.mean
        observed = rule == "observed" and bool(rec.is_target(s).any())
        extrapolate = rule == "extrapolate"
        if evidence.feasibility is not None:
            feasibility = evidence.feasibility
            if observed or (rule != "extrapolate" and bool((configs.n_target > 0).any())):
                candidates = configs.n_target > 0
            else:
                candidates = torch.ones_like(configs.n_target, dtype=torch.bool)
            eligible = candidates & (feasibility >= 0.5)
            if not bool(eligible.any()):
                # No candidate is likely feasible: a configuration known from cheap runs that
                # is likely feasible at the target beats one seen infeasible there, ranked by
                # the model; failing that, the likeliest configurations.
                observed, extrapolate = False, True
                eligible = feasibility >= 0.5
                if not bool(eligible.any()):
                    eligible = feasibility >= feasibility.max()
            mean = torch.where(eligible, mean, math.inf)
            y = torch.where(eligible[configs.index], y, math.inf)
        if observed:
            k = rec.best_observed_at_target(configs, s, y)
        else:
            k = rec.choose_supported(mean, evidence.std, configs.n_target, extrapolate=extrapolate)
        # The posterior mean, not the observed value: the best of several noisy target values
        # is biased low, and the posterior's standard deviation is about the latent value.
        value = sign * float(evidence.mean[k])
        members = configs.index == k
        best = _best_member(members, rec.is_target(s), y)
        trial = completed[best]
        std = float(evidence.std[k])
        n_target = int(configs.n_target[k])
        clipped = _clipped_target_values(y_raw, s, members, completed)
        if clipped is not None:
            # The model saw this configuration's target values pulled in to the outlier fence
            # (:func:`~optuna_isbo.model.tame_outliers`): its posterior describes the fence, not
            # the configuration. Report what was observed, and no model uncertainty.
            value, std = sign * clipped, math.nan
        exact = members & _same_run(completed, best, space)
        if bool((members & ~exact).any()):
            # Parameters outside the joint search space (conditional ones, a changed range)
            # tell the configuration's trials apart where the model cannot: its posterior
            # describes them all. Report what this exact configuration observed at the target
            # (it has target values whenever the group has: ``_best_member``).
            at_target = exact & rec.is_target(s)
            n_target = int(at_target.sum())
            if n_target > 0:
                value, std = sign * float(y_raw[at_target].mean()), math.nan
        if evidence.feasibility is not None:
            p_feasible = float(evidence.feasibility[k])
    params = dict(trial.params)
    if space.fidelity_param is not None:
        params[space.fidelity_param] = space.unit_to_fidelity(1.0)
    return Recommendation(
        params=params,
        value=value,
        std=std,
        trial_number=trial.number,
        n_target_evaluations=n_target,
        feasibility_probability=p_feasible,
    )


def _clipped_target_values(
    y: torch.Tensor, s: torch.Tensor, members: torch.Tensor, completed: list[FrozenTrial]
) -> float | None:
    """Mean observed target value of ``members``, if the outlier fence changed any of them.

    ``y (n,)`` are the values in minimized units, ``s (n,)`` the fidelities, ``members (n,)``
    the trials of one configuration. ``None`` when its target values reached the model as
    they are.
    """
    bad = torch.tensor([not ran_in_full(t) for t in completed])
    tamed = tame_outliers(y, bad)
    at_target = members & rec.is_target(s)
    if not bool((at_target & (tamed != y)).any()):
        return None
    return float(y[at_target].mean())


def _same_run(completed: list[FrozenTrial], index: int, space: SearchSpace) -> torch.Tensor:
    """``(n,)`` whether each trial ran the parameters of ``completed[index]``, fidelity aside."""

    def key(trial: FrozenTrial) -> dict[str, object]:
        return {k: v for k, v in trial.params.items() if k != space.fidelity_param}

    reference = key(completed[index])
    return torch.tensor([key(t) == reference for t in completed], dtype=torch.bool)


def _best_member(members: torch.Tensor, at_target: torch.Tensor, y: torch.Tensor) -> int:
    """Index of the best trial among ``members (n,)``, target evaluations first."""
    pool = members & at_target if bool((members & at_target).any()) else members
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
    k = configs.X.shape[0]
    n_ok = torch.zeros(k, dtype=torch.float64).scatter_add(
        0, configs.index, (counted & feasible).to(torch.float64)
    )
    n = torch.zeros(k, dtype=torch.float64).scatter_add(
        0, configs.index, counted.to(torch.float64)
    )
    return torch.where(n > 0, n_ok / n.clamp_min(1.0), model_probability)


def model_inputs(space: SearchSpace, X: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Model inputs ``(n, D)``: ``x`` columns, then ``s`` when the space has a fidelity axis."""
    if space.fidelity_param is None:
        return X
    return torch.cat([X, s[:, None]], dim=1)
