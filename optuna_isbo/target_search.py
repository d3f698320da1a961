"""Bayesian optimization at the target fidelity, delegated to Optuna's ``GPSampler``.

A multi-fidelity sampler is only worth its name if it is never worse than the plain
single-fidelity GP search it competes with. The surest way to guarantee that is to *run* that
search, not to re-derive it: whenever :class:`~optuna_isbo.ISBOSampler` searches at the target
fidelity (a study without a fidelity parameter, a fidelity pinned by the objective, the share of
the cost that is the target search's, or a study whose cheap fidelities failed their checks),
the proposal comes from :class:`optuna.samplers.GPSampler` run on the trials evaluated at the
target alone. It brings Optuna's dimension-aware kernel priors, integer and categorical
handling, log expected improvement (constrained, and batched over running trials) and its
multi-start mixed acquisition optimizer (``optuna/_gp/``). In a study with a fidelity its
acquisition is also charged for runs dearer than the typical target run, as the multi-fidelity
search weighs cost (:mod:`optuna_isbo.target_cost`).

``GPSampler`` reads the study only through ``Study._get_trials``, ``Study.directions`` and the
storage, so it is handed a :class:`TargetView` of the study: the same study whose trial
listing keeps only the completed trials at the target fidelity with a finite value, plus the
running trials, which ``GPSampler`` treats as pending points (batched log EI, ``qLogEI``).

Trials that taught nothing about the objective (failed, pruned, or completed at an infinite
value) are listed too. ``GPSampler`` alone would forget them and, its acquisition unchanged,
propose the same failing configuration again (an out-of-memory error, a diverged run). The view
lists each as completed at the worst value observed so far, as a diverged run reported at the
worst value is: the acquisition then leaves a region that keeps failing instead of probing it
point by point. (Where that is not possible, before any observation or where the trial lacks
the study's constraint values, it is listed as running: a pending point, which keeps the
acquisition from proposing it again.) On a study without a fidelity parameter and without
such trials, the proposals are exactly those of
``GPSampler(seed=seed, independent_sampler=...)``, unless outliers would squeeze the other
values: values far above the rest (beyond ``q75 + 5 IQR``) are handed over
pulled in to that fence only where they inflate the standard deviation of the values more
than :data:`OUTLIER_MIN_SQUEEZE`-fold (a diverged training's loss of ``4e7`` among errors
below 1, which standardized would leave ``GPSampler`` a flat landscape). Honest bad values (a
poor architecture's error of 0.6 among 0.3s) reach it as they are. With a fidelity, the
target search gets the values as the multi-fidelity model sees them, every value beyond the
fence pulled in (:func:`optuna_isbo.model.tame_outliers`).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Container, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GPSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo import promotion
from optuna_isbo import recommendation as rec
from optuna_isbo import trials as study_trials
from optuna_isbo._device import on_cpu
from optuna_isbo.decisions import TARGET_PHASE
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.target_cost import CostAwareGPSampler

# How much outliers must inflate the values' standard deviation before a study without a
# fidelity hands them to GPSampler pulled in to the outlier fence (the module docstring).
OUTLIER_MIN_SQUEEZE = 10.0


class TargetView:
    """A study whose trial listing keeps the completed trials that ``keep`` accepts, the running
    trials, and the failed configurations ``marks``.

    Every other attribute (directions, storage, study id) is the study's own.

    Parameters
    ----------
    study
        The study to view (single-objective).
    keep
        Predicate on a completed trial: whether it is an observation for the target search.
    marks
        Finished trials that must not be proposed again (see the module docstring).
    values
        Values, by trial number, that replace the observed ones (the model's tamed outliers,
        :func:`optuna_isbo.model.tame_outliers`).
    warned
        Numbers of the trials already reported as missing a constraint value; updated (the
        sampler keeps it, so that each trial is reported once per study, not once per ``ask``).
    """

    def __init__(
        self,
        study: Study,
        keep: Callable[[FrozenTrial], bool],
        marks: Sequence[FrozenTrial] = (),
        values: dict[int, float] | None = None,
        warned: set[int] | None = None,
    ) -> None:
        self._study = study
        self._keep = keep
        self._marks = list(marks)
        self._values = values or {}
        self._warned = set() if warned is None else warned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        everything = self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache)
        observed = [
            self._with_value(t)
            for t in everything
            if t.state == TrialState.COMPLETE and self._keep(t)
        ]
        observed = _with_missing_constraints_infeasible(observed, self._warned)
        listed = observed + [t for t in everything if t.state == TrialState.RUNNING]
        listed += [self._listed_mark(t, observed) for t in self._marks]
        return [t for t in listed if states is None or t.state in states]

    def _with_value(self, trial: FrozenTrial) -> FrozenTrial:
        if trial.number not in self._values:
            return trial
        listed = copy.copy(trial)
        listed.values = [self._values[trial.number]]
        return listed

    def _listed_mark(self, trial: FrozenTrial, observed: list[FrozenTrial]) -> FrozenTrial:
        """``trial`` completed at the worst observed value, or else running (pending)."""
        listed = copy.copy(trial)
        constraint_keys = {tuple(sorted(t.constraints)) for t in observed}
        if observed and constraint_keys == {tuple(sorted(trial.constraints))}:
            values = [float(t.value) for t in observed if t.value is not None]
            maximize = self._study.direction == StudyDirection.MAXIMIZE
            listed.state = TrialState.COMPLETE
            listed.values = [min(values) if maximize else max(values)]
        else:
            listed.state = TrialState.RUNNING
            listed.values = None
        return listed

    def get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


_CONSTRAINT_PREFIX = "constraints:"


def _with_missing_constraints_infeasible(
    observed: list[FrozenTrial], warned: set[int]
) -> list[FrozenTrial]:
    """``observed`` with every trial carrying every constraint name that any of them carries.

    A trial that returned before ``trial.set_constraint`` (an early exit, an exception caught
    inside the objective) lacks a value that the others have; ``GPSampler`` would refuse every
    later trial ("The constraint names must be the same for all trials."). The trial is counted
    infeasible instead, as the multi-fidelity search counts it: the missing value becomes the
    largest observed value of that constraint, or its observed spread where every observed
    value is feasible (1 where they are all equal), with a warning naming the trial (once:
    ``warned`` holds the trials already reported).
    """
    names = sorted({key for t in observed for key in t.constraints})
    if not names:
        return observed
    columns = {
        key: [t.constraints[key] for t in observed if key in t.constraints] for key in names
    }
    fill = {}
    for key, values in columns.items():
        finite = [v for v in values if abs(v) != float("inf")] or [0.0]
        hi, spread = max(finite), max(finite) - min(finite)
        fill[key] = hi if hi > 0.0 else (spread if spread > 0.0 else 1.0)
    listed = []
    for t in observed:
        missing = [key for key in names if key not in t.constraints]
        if not missing:
            listed.append(t)
            continue
        if t.number not in warned:
            warned.add(t.number)
            warnings.warn(
                f"Trial {t.number} has no value for the constraint(s) {missing}; it is counted "
                "as infeasible. Call trial.set_constraint for every constraint before "
                "returning.",
                UserWarning,
                stacklevel=2,
            )
        filled = copy.copy(t)
        filled._system_attrs = {
            **t.system_attrs,
            **{_CONSTRAINT_PREFIX + key: fill[key] for key in missing},
        }
        listed.append(filled)
    return listed


def make_target_sampler(
    seed: int | None,
    independent_sampler: BaseSampler,
    n_startup_trials: int,
    cost_seconds: Callable[[FrozenTrial], float],
) -> CostAwareGPSampler:
    """The ``GPSampler`` behind the target search, seeded as the user seeded ISBOSampler.

    ``independent_sampler`` is shared with :class:`~optuna_isbo.ISBOSampler`, so that on a study
    without a fidelity the startup trials are drawn exactly as ``GPSampler`` draws them. It is
    the :class:`~optuna_isbo.target_cost.CostAwareGPSampler`, whose proposals are
    ``GPSampler``'s wherever :func:`sample_at_target` names no costed trials.
    """
    return CostAwareGPSampler(
        cost_seconds=cost_seconds,
        seed=seed,
        independent_sampler=independent_sampler,
        n_startup_trials=n_startup_trials,
        warn_independent_sampling=False,
    )


def sample_at_target(
    sampler: GPSampler,
    view: Study | TargetView,
    trial: FrozenTrial,
    search_space: dict[str, BaseDistribution],
    costed: Container[int] = (),
) -> dict[str, Any]:
    """``GPSampler``'s proposal over ``search_space`` from the trials in ``view``.

    ``costed`` are the trials (by number) whose cost charges the acquisition
    (:mod:`optuna_isbo.target_cost`); none, as in a study without a fidelity, leaves it
    ``GPSampler``'s. Returns an empty dict while ``view`` has fewer completed trials than the
    sampler's startup count; the caller then draws the startup point.
    """
    if not isinstance(sampler, CostAwareGPSampler):  # a sampler pickled before the charge
        return sampler.sample_relative(view, trial, search_space)  # type: ignore[arg-type]
    sampler.costed(costed)
    try:
        return sampler.sample_relative(view, trial, search_space)  # type: ignore[arg-type]
    finally:
        sampler.costed(())


def propose(
    sampler: GPSampler,
    study: Study,
    trial: FrozenTrial,
    space: SearchSpace,
    search_space: dict[str, BaseDistribution],
    completed: list[FrozenTrial],
    marks: list[FrozenTrial],
    trials: list[FrozenTrial],
    *,
    n_startup_trials: int,
    sobol_seed: int,
    may_promote: bool = True,
    warned: set[int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The target search's proposal in a study with a fidelity, at the target.

    ``sampler`` (``GPSampler``) sees the completed trials evaluated at the target alone, and
    ``marks`` (configurations that failed, :func:`optuna_isbo.trials.failed_configurations`)
    as in :class:`TargetView`. Until ``n_startup_trials`` completed trials are at the target,
    the proposal alternates between a promotion of the best-ranked cheap configuration
    (:mod:`optuna_isbo.promotion`) and the next point of a scrambled Sobol design in ``x``
    (seeded with ``sobol_seed``). ``trials`` are every listed trial, running ones included.
    Without ``may_promote`` (the sampler allows promotions only once the multi-fidelity
    search's checks have failed, and not while another worker's trial is still deciding what
    it runs) the slot is a Sobol point. ``warned`` is
    :class:`TargetView`'s.

    Returns
    -------
    tuple
        The parameters (the fidelity at the target) and the trial's ``isbo:`` attributes:
        the phase, and ``promoted`` during the startup.
    """
    fidelity = space.fidelity_param
    assert fidelity is not None
    at_target = {
        t.number for t in completed if space.fidelity_to_unit(t.params[fidelity]) >= rec.TARGET_S
    }
    x_space = {name: d for name, d in search_space.items() if name != fidelity}
    if x_space and len(at_target) >= n_startup_trials:
        observed = [t for t in completed if t.number in at_target]
        view = TargetView(
            study,
            lambda t: t.number in at_target,
            marks,
            study_trials.tamed_values(observed, study),
            warned,
        )
        params = sample_at_target(sampler, view, trial, x_space, costed=at_target)
        if params:
            return {**params, fidelity: space.unit_to_fidelity(1.0)}, {"phase": TARGET_PHASE}
    running = [
        study_trials.pending_params(t)
        for t in trials
        if t.state == TrialState.RUNNING and t.number != trial.number
    ]
    promoted = None
    if may_promote:
        with on_cpu():
            promoted = promotion.promotion(
                study, space, completed, trials, TARGET_PHASE, running, marks
            )
    if promoted is not None:
        return promoted, {"phase": TARGET_PHASE, "promoted": True}
    # GPSampler's startup is random: the target search's is the next point of a scrambled
    # Sobol design in ``x``. Screening it by the constraint model (the cheap trials inform
    # it) cut the infeasible share of a constrained study's trials (0.31 to 0.24) but left
    # the boundary unexplored at the target, and GPSampler's exact constrained optimum became
    # a near miss (benchmarks/RESULTS.md).
    with on_cpu():
        x = space.sample_sobol(trial.number + 1, seed=sobol_seed)[-1]
    return space.decode(x, 1.0), {"phase": TARGET_PHASE, "promoted": False}
