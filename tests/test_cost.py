"""The one rule for a trial's cost, shared by the sampler and the plots."""

from __future__ import annotations

import datetime
import decimal
import fractions
import math
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState, create_trial

from optuna_isbo import ISBOSampler
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


def _value_id(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 30 else f"{text[:20]}...({len(text)} chars)"


@pytest.mark.parametrize(
    "bad",
    [
        -1.0,
        math.nan,
        math.inf,
        "fast",
        True,
        None,
        [1.0],
        10**400,  # a Python int beyond the float64 range
        -(10**400),
        fractions.Fraction(10**400, 3),
        decimal.Decimal("1e400"),
        decimal.Decimal("sNaN"),
        np.bool_(True),
        np.float64(-2.0),
        np.float32(np.inf),
        np.array([5.0]),  # not a scalar
        np.array(5.0 + 1j),
        torch.tensor(True),
        torch.tensor([5.0]),
        torch.tensor(-5.0),
        torch.empty((), device="meta"),
        1 + 0j,
    ],
    ids=_value_id,
)
def test_bad_attribute_warns_and_falls_back_to_the_duration(bad: object) -> None:
    trial = _trial(1.0, 6.0)
    trial.user_attrs["isbo:cost"] = bad
    with pytest.warns(RuntimeWarning, match="isbo:cost") as record:
        assert trial_cost_seconds(trial) == pytest.approx(6.0)
    assert len(str(record[0].message)) < 300  # 10**400 is not written out in full


@pytest.mark.parametrize(
    "value",
    [
        np.float32(5.0),
        np.float16(5.0),
        np.int64(5),
        np.uint8(5),
        np.array(5.0),
        np.array(5, dtype=np.int32),
        torch.tensor(5.0),
        torch.tensor(5.0, dtype=torch.bfloat16),
        torch.tensor(5, dtype=torch.int64),
        torch.tensor(5.0, requires_grad=True),
        fractions.Fraction(10, 2),
        decimal.Decimal("5"),
        5,
    ],
    ids=_value_id,
)
def test_real_numbers_of_any_numeric_type_are_accepted(value: object) -> None:
    trial = _trial(value, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost = trial_cost_seconds(trial)
    assert cost == 5.0 and type(cost) is float


def _ask_with_costs(
    storage: optuna.storages.BaseStorage | None, costs: list[object]
) -> optuna.Study:
    """A study of the sampler (fidelity axis, startup design) whose trials set these costs,
    then one more ``ask``, which reads them all."""
    sampler = ISBOSampler(seed=0, n_startup_trials=len(costs) + 2)
    study = optuna.create_study(storage=storage, sampler=sampler)
    for cost in [*costs, None]:
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_int("super_batch_size", 16, 256, log=True)
        if cost is not None:
            trial.set_user_attr("isbo:cost", cost)
            study.tell(trial, 1.0)
    return study


@pytest.mark.parametrize("journal", [False, True], ids=["in-memory", "journal"])
def test_huge_integer_cost_is_ignored_by_later_asks(tmp_path: Path, journal: bool) -> None:
    # A journal keeps user attributes as JSON, which holds integers of any size; the
    # in-memory storage keeps the object itself.
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "log"))) if journal else None
    with pytest.warns(RuntimeWarning, match=r"'isbo:cost' = 1000.*\(int\)"):
        study = _ask_with_costs(storage, [2.0, 10**400])  # OverflowError before the fix
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert trials[1].user_attrs["isbo:cost"] == 10**400
    with pytest.warns(RuntimeWarning, match="isbo:cost"):
        assert trial_cost_seconds(trials[1]) < 1e3  # its duration


def test_numpy_and_torch_costs_kept_in_memory_are_used() -> None:
    costs = [np.float32(5.0), np.int64(5), torch.tensor(5.0)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        study = _ask_with_costs(None, costs)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert [trial_cost_seconds(t) for t in trials] == [5.0, 5.0, 5.0]
