"""Which trials count, and as what: observations, marks of failed configurations, costs.

The sampler reads a study's trials through these functions only: the completed trials with a
finite value are the observations (:func:`usable_completed_trials`); failed, pruned and
non-finite trials and early returns are marks that must not be proposed again
(:func:`failed_configurations`); a diverged run's value is the worst other value and its cost
is not a whole run's (:func:`ran_in_full`, :func:`tamed_values`); a run above the target
fidelity is not an evaluation at the target (:func:`runs_up_to_target`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo.model import tame_outliers
from optuna_isbo.search_space import SearchSpace


def tamed_values(
    completed: list[FrozenTrial], study: Study, min_squeeze: float | None = None
) -> dict[int, float]:
    """Values, by trial number, that :func:`~optuna_isbo.model.tame_outliers` changed.

    In the study's units and direction; diverged runs (``isbo:diverged``) count as bad.
    ``min_squeeze`` is :func:`~optuna_isbo.model.tame_outliers`'s.
    """
    if not completed:
        return {}
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    y = torch.tensor([sign * float(t.values[0]) for t in completed], dtype=torch.float64)
    tamed = tame_outliers(
        y, torch.tensor([not ran_in_full(t) for t in completed]), min_squeeze=min_squeeze
    )
    return {
        t.number: sign * float(v)
        for t, v, old in zip(completed, tamed.tolist(), y.tolist(), strict=True)
        if v != old
    }


def finite_completed_trials(study: Study) -> list[FrozenTrial]:
    """The study's completed trials with a finite value: the observations."""
    trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.value is not None and math.isfinite(t.value)]


def failed_configurations(
    trials: Sequence[FrozenTrial], search_space: dict[str, BaseDistribution], fidelity: str | None
) -> list[FrozenTrial]:
    """Finished trials that taught nothing about the objective, but must not be proposed again.

    Failed and pruned trials, trials completed at a non-finite value, and completed trials
    that returned before suggesting the fidelity (a configuration rejected early), each with
    every parameter of ``x`` (``search_space`` less the fidelity). They enter the searches as
    pending points: a deterministic acquisition that forgot them would propose the same
    failing configuration again.
    """
    x_names = search_space.keys() - {fidelity}
    marks = []
    for t in trials:
        if not x_names <= t.params.keys():
            continue
        if t.state in (TrialState.FAIL, TrialState.PRUNED):
            marks.append(t)
        elif t.state == TrialState.COMPLETE and (
            t.value is None
            or not math.isfinite(t.value)
            or not search_space.keys() <= t.params.keys()
        ):
            marks.append(t)
    return marks


def mark_params(trial: FrozenTrial, space: SearchSpace) -> list[dict[str, Any]]:
    """Parameters of a failed configuration as pending points.

    At the fidelity it failed at and at the target (a run that failed cheaply, out of memory
    say, is no likelier to succeed when dearer); at the target alone if it has no fidelity.
    """
    params = dict(trial.params)
    if space.fidelity_param is None:
        return [params]
    target = space.unit_to_fidelity(1.0)
    at_target = {**params, space.fidelity_param: target}
    if space.fidelity_param not in params or params[space.fidelity_param] == target:
        return [at_target]
    return [params, at_target]


def usable_completed_trials(
    trials: Sequence[FrozenTrial], search_space: dict[str, BaseDistribution]
) -> list[FrozenTrial]:
    usable = []
    for t in trials:
        if t.state != TrialState.COMPLETE or not search_space.keys() <= t.params.keys():
            continue
        if t.value is None or not math.isfinite(t.value):
            warnings.warn(
                f"Trial {t.number} has a non-finite value ({t.value}); ISBOSampler ignores it.",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        usable.append(t)
    return usable


DIVERGED_ATTR = "isbo:diverged"


def runs_up_to_target(completed: list[FrozenTrial], space: SearchSpace) -> list[FrozenTrial]:
    """The trials of ``completed`` that ran at or below the target fidelity.

    A run above ``target_fidelity`` (an enqueued trial, or a fidelity range whose upper end
    lies above the target) measures another quantity than the one optimized: a larger
    super-batch or more epochs than the target give other values than a run at the target.
    The model's fidelity axis ends at the target (:meth:`SearchSpace.fidelity_to_unit` clips
    such a run to ``s = 1``), so it would take the run for a target evaluation, and report
    what was observed above the target as the value at the target. Such runs are left out,
    with a :class:`RuntimeWarning` naming them. Without a fidelity axis every trial is kept.

    Raises
    ------
    ValueError
        If every trial ran above the target.
    """
    name = space.fidelity_param
    if name is None:
        return completed
    kept = [t for t in completed if not space.above_target(t.params[name])]
    if len(kept) < len(completed):
        above = [t.number for t in completed if space.above_target(t.params[name])]
        listed = ", ".join(map(str, above[:10])) + (", ..." if len(above) > 10 else "")
        warnings.warn(
            f"Trial(s) {listed} ran above the target fidelity ({name}={space.target_fidelity}); "
            "the recommendation leaves them out: a run above the target is not an evaluation "
            "at the target.",
            RuntimeWarning,
            stacklevel=4,
        )
    if not kept:
        raise ValueError(
            f"Every completed trial ran above the target fidelity ({name}="
            f"{space.target_fidelity}): there is nothing to recommend at the target. Evaluate "
            "at most at the target, or raise `target_fidelity`."
        )
    return kept


def ran_in_full(trial: FrozenTrial) -> bool:
    """Whether a trial's cost is that of a whole run: not one marked ``isbo:diverged``.

    A diverged run stopped early, so its cost says little about what a run there costs, and a
    cheap-looking region that always fails would attract an acquisition per second.

    The flag is read as :func:`diverged_flag` reads it: a bool of any kind (Python, NumPy,
    a 0-d NumPy array or torch tensor), or the integer 0 or 1. Anything else (a string such
    as ``"true"``, a float, a list) is ignored with a warning: the trial counts as a whole run.
    """
    return not diverged_flag(trial)


def diverged_flag(trial: FrozenTrial) -> bool:
    """The trial's ``isbo:diverged`` user attribute as a bool (``False`` when absent or None).

    Accepted, as :func:`optuna_isbo.cost.trial_cost_seconds` accepts NumPy and torch
    scalars for costs: ``bool``, ``numpy.bool_``, 0-d NumPy arrays and torch tensors of a bool
    or integer dtype, and integers, whose value must be 0 or 1. Any other value warns
    (:class:`RuntimeWarning`, naming the trial) and reads as ``False``.
    """
    raw = trial.user_attrs.get(DIVERGED_ATTR)
    if raw is None:
        return False
    value: object = raw
    if isinstance(raw, np.ndarray | torch.Tensor) and raw.ndim == 0:
        is_bool = raw.dtype == torch.bool if isinstance(raw, torch.Tensor) else raw.dtype == bool
        is_int = (
            not raw.dtype.is_floating_point and not raw.dtype.is_complex
            if isinstance(raw, torch.Tensor)
            else raw.dtype.kind in "iu"
        )
        if is_bool or is_int:
            value = raw.item()
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) and int(value) in (0, 1):
        return bool(value)
    warnings.warn(
        f"Trial {trial.number} has user attribute {DIVERGED_ATTR!r} = {raw!r} "
        f"({type(raw).__name__}), not a bool (or 0 or 1); the trial is treated as a run that "
        "did not diverge. Set it to True for a diverged run.",
        RuntimeWarning,
        stacklevel=3,
    )
    return False


#: System attributes holding a trial's chosen parameters as JSON, in chunks
#: (``isbo:relative_params:0``, ...) and their count (``isbo:relative_params:n``).
RELATIVE_PARAMS_KEY = "isbo:relative_params"
#: The longest chunk: RDB storages bound an attribute's length.
ATTR_MAX_LENGTH = 2045
#: Prefix of the sampler's user attributes.
ATTR_PREFIX = "isbo:"


def pending_params(trial: FrozenTrial) -> dict[str, Any]:
    """Parameters of a running trial: those chosen by the sampler, then those set so far.

    The chosen parameters are stored as JSON in chunks, with the number of chunks written last
    (see :func:`write_attrs`): a reader that finds the count finds every chunk. Anything else
    (a writer killed between its writes, or a study written by an older version) is read as
    "no chosen parameters", never as an error that would stop every later ``ask``.
    """
    params: dict[str, Any] = {}
    n_chunks = trial.system_attrs.get(f"{RELATIVE_PARAMS_KEY}:n")
    chunks = (
        [trial.system_attrs.get(f"{RELATIVE_PARAMS_KEY}:{i}") for i in range(n_chunks)]
        if (isinstance(n_chunks, int) and not isinstance(n_chunks, bool) and 0 < n_chunks < 10_000)
        else []
    )
    if chunks and all(isinstance(c, str) for c in chunks):
        try:
            decoded = json.loads("".join(chunks))  # type: ignore[arg-type]
        except json.JSONDecodeError:
            decoded = None
        if isinstance(decoded, dict):
            params = decoded
    params.update(trial.params)
    return params


def write_attrs(
    study: Study, trial: FrozenTrial, attrs: dict[str, Any], params: dict[str, Any]
) -> None:
    """Record the sampler's decision on ``trial``: ``params`` for :func:`pending_params`, and
    ``attrs`` as user attributes prefixed with ``isbo:``."""
    storage = study._storage
    # Share the chosen parameters with other workers, which see this trial as pending before
    # the objective has suggested all of them. RDB storages bound an attribute's length, so
    # the JSON is split into chunks; the count goes last, when every chunk is in place. They go
    # before the user attributes, so that a trial another worker sees with an ``isbo:phase``
    # has its parameters readable too.
    text = json.dumps(params)
    chunks = [text[i : i + ATTR_MAX_LENGTH] for i in range(0, max(len(text), 1), ATTR_MAX_LENGTH)]
    for i, chunk in enumerate(chunks):
        storage.set_trial_system_attr(trial._trial_id, f"{RELATIVE_PARAMS_KEY}:{i}", chunk)
    storage.set_trial_system_attr(trial._trial_id, f"{RELATIVE_PARAMS_KEY}:n", len(chunks))
    for key, value in attrs.items():
        storage.set_trial_user_attr(trial._trial_id, ATTR_PREFIX + key, value)
