"""The data that :func:`~optuna_isbo.meta.fit_prior` reads from finished studies.

Each study's completed trials with a finite value, encoded in a common search space, and
their values sign-flipped to a minimized objective with outliers tamed as the sampler tames
them (see :mod:`optuna_isbo.meta`, **Units**).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo.model import tame_outliers
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ran_in_full

__all__ = ["StudyLike"]

_DTYPE = torch.float64

StudyLike = Study | tuple[str | BaseStorage, str]


def _space_differences(
    expected: dict[str, BaseDistribution], actual: dict[str, BaseDistribution]
) -> list[str]:
    """Human-readable differences between two search spaces (single values ignored)."""
    expected = {k: v for k, v in expected.items() if not v.single()}
    actual = {k: v for k, v in actual.items() if not v.single()}
    problems = []
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    if missing:
        problems.append(f"missing parameters {missing}")
    if extra:
        problems.append(f"extra parameters {extra}")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] != actual[name]:
            problems.append(f"{name!r} is {actual[name]!r}, expected {expected[name]!r}")
    return problems


@dataclass
class _StudyData:
    name: str
    inputs: torch.Tensor  # (n_i, D)
    y: torch.Tensor  # (n_i,) minimized objective, raw units


def _load_study(item: Any) -> Study:
    if isinstance(item, Study):
        return item
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str | BaseStorage)
        and isinstance(item[1], str)
    ):
        return optuna.load_study(study_name=item[1], storage=item[0])
    raise TypeError(
        "Each study must be an optuna.Study or a (storage, study_name) pair, got "
        f"{type(item).__name__}."
    )


def _collect(
    studies: Sequence[StudyLike],
    search_space: dict[str, BaseDistribution] | None,
    fidelity_param: str | None,
    target_fidelity: float | None,
    min_trials: int,
) -> tuple[SearchSpace, list[_StudyData]]:
    loaded = []
    for item in studies:
        study = _load_study(item)
        if len(study.directions) != 1:
            raise ValueError(f"Study {study.study_name!r} is multi-objective; not supported.")
        trials = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)
        ]
        if len(trials) < min_trials:
            warnings.warn(
                f"Study {study.study_name!r} has {len(trials)} completed trials with a finite "
                f"value (fewer than min_trials={min_trials}); fit_prior skips it.",
                UserWarning,
                stacklevel=3,
            )
            continue
        loaded.append((study, trials))
    if not loaded:
        raise ValueError("fit_prior needs at least one study with enough completed trials.")

    reference = search_space
    reference_name = "`search_space`"
    if reference is None:
        reference = _trials_space(loaded[0][1])
        reference_name = f"study {loaded[0][0].study_name!r}"
    reference = {k: v for k, v in reference.items() if not v.single()}
    for study, trials in loaded:
        problems = _space_differences(reference, _trials_space(trials))
        if problems:
            raise ValueError(
                f"Search space of study {study.study_name!r} differs from that of "
                f"{reference_name}: " + "; ".join(problems) + "."
            )
    space = SearchSpace(reference, fidelity_param, target_fidelity)
    data = []
    for study, trials in loaded:
        X, s = space.encode_trials(trials)
        inputs = X if space.fidelity_param is None else torch.cat([X, s[:, None]], dim=1)
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        y = torch.tensor([sign * float(t.value) for t in trials], dtype=_DTYPE)  # type: ignore[arg-type]
        # As the sampler does: one diverged run reported at its loss (1e12) would otherwise
        # set the pooled scale and flatten the prior everywhere else.
        y = tame_outliers(y, torch.tensor([not ran_in_full(t) for t in trials]))
        data.append(_StudyData(study.study_name, inputs, y))
    return space, data


def _trials_space(trials: list[FrozenTrial]) -> dict[str, BaseDistribution]:
    """Intersection of the trials' distributions (single-valued ones dropped)."""
    space = optuna.search_space.intersection_search_space(trials)
    return {k: v for k, v in space.items() if not v.single()}
