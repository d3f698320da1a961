"""The one rule for a trial's cost, shared by the sampler and the plots."""

from __future__ import annotations

import datetime
import math

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from optuna_isbo.cost import MIN_COST_SECONDS, trial_cost_seconds


def _trial(cost: object | None, duration_seconds: float | None) -> FrozenTrial:
    attrs = {} if cost is None else {"isbo:cost": cost}
    trial = create_trial(
        value=1.0,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs=attrs,
        state=TrialState.COMPLETE,
    )
    assert trial.datetime_complete is not None
    if duration_seconds is None:
        trial.datetime_start = None
    else:
        delta = datetime.timedelta(seconds=duration_seconds)
        trial.datetime_start = trial.datetime_complete - delta
    return trial


def test_attribute_larger_than_duration_is_used() -> None:
    # A simulated cost (a benchmark) exceeds the real duration.
    assert trial_cost_seconds(_trial(30.0, 0.5)) == 30.0


def test_duration_larger_than_attribute_is_used() -> None:
    # The attribute measures training only; the duration adds the sampler, setup, validation.
    assert trial_cost_seconds(_trial(2.0, 9.0)) == pytest.approx(9.0)


def test_duration_alone() -> None:
    assert trial_cost_seconds(_trial(None, 4.0)) == pytest.approx(4.0)


def test_attribute_alone() -> None:
    assert trial_cost_seconds(_trial(3.0, None)) == 3.0


def test_floor_without_information() -> None:
    assert trial_cost_seconds(_trial(None, None)) == MIN_COST_SECONDS
    assert trial_cost_seconds(_trial(0.0, 0.0)) == MIN_COST_SECONDS


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "fast", True, None, [1.0]])
def test_bad_attribute_warns_and_falls_back_to_the_duration(bad: object) -> None:
    trial = _trial(1.0, 6.0)
    trial.user_attrs["isbo:cost"] = bad
    with pytest.warns(RuntimeWarning, match="isbo:cost"):
        assert trial_cost_seconds(trial) == pytest.approx(6.0)


def test_custom_attribute_name() -> None:
    trial = _trial(None, 1.0)
    trial.user_attrs["seconds"] = 50.0
    trial.user_attrs["isbo:cost"] = 99.0
    assert trial_cost_seconds(trial, "seconds") == 50.0
