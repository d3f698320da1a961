"""What users see at the edges of the API: argument checks, warnings, attributes, the plot.

Covers the type checks of ``ISBOSampler``'s bool and object arguments; the warning for a
``fidelity_param`` that no completed trial suggests (a typo); the warning for a parameter that
leaves the joint search space when the search space changes during a study; the
``isbo:fidelity`` attribute of a trial whose every parameter ``enqueue_trial`` fixed; and
:func:`~optuna_isbo.visualization.plot_cost_history` on constrained studies (Optuna's
feasibility rule) and with the cost of pruned and failed trials.
"""

from __future__ import annotations

import datetime
import math
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from optuna_isbo import ISBOSampler
from optuna_isbo.visualization import plot_cost_history

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIDELITY = "super_batch_size"
X = FloatDistribution(0.0, 1.0)
B = IntDistribution(16, 256, log=True)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    b = trial.suggest_int(FIDELITY, 16, 256, log=True)
    trial.set_user_attr("isbo:cost", float(b) / 16)
    return (x - 0.3) ** 2 + 1.0 / b


TYPO = "no completed trial has a parameter"


def _messages(caught: list[warnings.WarningMessage], *needles: str) -> list[str]:
    """The caught warnings' messages that contain every one of ``needles``."""
    texts = [str(w.message) for w in caught]
    return [t for t in texts if all(n in t for n in needles)]


# -- argument checks --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["consider_running_trials", "warn_independent_sampling"])
@pytest.mark.parametrize("value", ["no", 0, 1, None, 1.0])
def test_bool_arguments_of_another_type_are_refused(name: str, value: object) -> None:
    """``"no"`` is truthy: accepted, it would mean the opposite of what the user wrote."""
    with pytest.raises(TypeError, match=f"`{name}` must be bool"):
        ISBOSampler(**{name: value})


@pytest.mark.parametrize("name", ["consider_running_trials", "warn_independent_sampling"])
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_bool_arguments_accept_python_and_numpy_bools(name: str, value: Any) -> None:
    sampler = ISBOSampler(**{name: value})
    stored = getattr(sampler, f"_{name}")
    assert type(stored) is bool and stored == bool(value)


@pytest.mark.parametrize(
    "value", ["random", optuna.samplers.RandomSampler, 3, {"seed": 0}], ids=repr
)
def test_an_independent_sampler_that_is_no_sampler_is_refused(value: object) -> None:
    """Refused at construction, not with an ``AttributeError`` in the first trial."""
    with pytest.raises(TypeError, match="`independent_sampler` must be .*BaseSampler instance"):
        ISBOSampler(independent_sampler=value)  # type: ignore[arg-type]


def test_an_independent_sampler_instance_is_used() -> None:
    independent = optuna.samplers.RandomSampler(seed=1)
    assert ISBOSampler(independent_sampler=independent)._independent_sampler is independent


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"prior": {}}, "`prior` must be .*GPPrior.*dict"),
        ({"prior": "prior.json"}, "`prior` must be .*GPPrior.*str"),
        ({"constraints_func": 3}, "`constraints_func` must be callable.*int"),
        ({"constraints_func": [lambda t: [0.0]]}, "`constraints_func` must be callable.*list"),
    ],
)
def test_object_arguments_of_the_wrong_type_name_themselves_and_the_type(
    kwargs: dict[str, Any], pattern: str
) -> None:
    with pytest.raises(TypeError, match=pattern):
        ISBOSampler(**kwargs)


# -- a fidelity parameter that no trial suggests ---------------------------------------------
def test_a_misspelt_fidelity_param_is_reported_once() -> None:
    """``super_batchsize`` for ``super_batch_size``: the study has no fidelity for the sampler,
    which would silently run as GPSampler; the warning names both spellings."""
    sampler = ISBOSampler(seed=0, fidelity_param="super_batchsize", n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(_objective, n_trials=5)
    reported = _messages(caught, TYPO, "'super_batchsize'", "'super_batch_size'", "'x'")
    assert len(reported) == 1, [str(w.message) for w in caught]


def test_no_fidelity_warning_while_nothing_has_completed() -> None:
    sampler = ISBOSampler(seed=0, fidelity_param="super_batchsize")
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.ask().suggest_float("x", 0.0, 1.0)  # the first ask: no completed trial yet
    assert _messages(caught, TYPO) == []


@pytest.mark.parametrize("fidelity_param", [FIDELITY, None])
def test_no_fidelity_warning_when_the_name_is_right_or_none(fidelity_param: str | None) -> None:
    sampler = ISBOSampler(seed=0, fidelity_param=fidelity_param, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(_objective, n_trials=5)
    assert _messages(caught, TYPO) == []


def test_no_fidelity_warning_when_the_trials_have_no_numeric_parameter() -> None:
    """A fidelity is numeric: a study of categorical parameters alone has no candidate for
    a misspelt one."""
    sampler = ISBOSampler(seed=0, n_startup_trials=2)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(
            lambda t: float(t.suggest_categorical("kind", ["a", "b", "c"]) == "b"), n_trials=4
        )
    assert _messages(caught, TYPO) == []


def test_an_early_return_in_a_study_with_the_fidelity_is_not_a_typo() -> None:
    """A trial that returned before suggesting the fidelity, after trials that suggested it."""
    sampler = ISBOSampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(_objective, n_trials=2)
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) + 10.0, n_trials=1)
        study.optimize(_objective, n_trials=2)
    assert _messages(caught, TYPO) == []


# -- a parameter leaves the joint search space ------------------------------------------------
def _add(study: optuna.Study, params: dict[str, Any], distributions: dict[str, Any]) -> None:
    study.add_trial(
        create_trial(
            value=sum((v - 0.3) ** 2 for v in params.values() if isinstance(v, float)),
            params=params,
            distributions=distributions,
        )
    )


def test_a_parameter_added_during_the_study_is_reported_once() -> None:
    """``y`` exists in the last three trials only: the model cannot use it."""
    sampler = ISBOSampler(seed=0, fidelity_param=None, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    for x in (0.1, 0.5, 0.9, 0.3):
        _add(study, {"x": x}, {"x": X})
    for x, y in ((0.2, 0.6), (0.4, 0.1), (0.7, 0.8)):
        _add(study, {"x": x, "y": y}, {"x": X, "y": X})
    trial = study.ask()
    with pytest.warns(UserWarning, match=r"'y'.*missing from 4 of the 7 completed trials"):
        space = sampler.infer_relative_search_space(
            study, study._storage.get_trial(trial._trial_id)
        )
    assert set(space) == {"x"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler.infer_relative_search_space(study, study._storage.get_trial(trial._trial_id))
        sampler.recommendation(study)
    assert _messages(caught, "'y'", "joint search space") == []


def test_a_widened_range_is_reported_once() -> None:
    sampler = ISBOSampler(seed=0, fidelity_param=None, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    y = FloatDistribution(0.0, 2.0)
    for x, high in ((0.1, 1.0), (0.5, 1.0), (0.9, 1.0), (1.5, 2.0)):
        _add(study, {"x": x, "y": x / 2}, {"x": FloatDistribution(0.0, high), "y": y})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(lambda t: t.suggest_float("x", 0.0, 2.0) + t.suggest_float("y", 0, 2), 2)
        sampler.recommendation(study)
    reported = _messages(caught, "'x'", "distribution changed")
    assert len(reported) == 1, [str(w.message) for w in caught]
    assert "ignore" in reported[0]
    assert _messages(caught, "'y'", "joint search space") == []


def test_a_stable_search_space_gives_no_search_space_warning() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(_objective, n_trials=5)
        sampler.recommendation(study)
    assert _messages(caught, "joint search space") == []


# -- attributes of enqueued trials -------------------------------------------------------------
def test_a_fully_enqueued_trial_has_its_fidelity_attribute() -> None:
    """In the startup design and after it, as every other trial has."""
    sampler = ISBOSampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 0.25, FIDELITY: 128})
    study.optimize(_objective, n_trials=4)
    study.enqueue_trial({"x": 0.75, FIDELITY: 32})
    study.optimize(_objective, n_trials=2)
    for trial in study.trials:
        assert trial.user_attrs.get("isbo:fidelity") == trial.params[FIDELITY], trial.number
    assert study.trials[0].user_attrs["isbo:phase"] == "enqueued"
    assert study.trials[4].user_attrs["isbo:phase"] == "enqueued"


def test_an_enqueued_trial_without_a_fidelity_param_has_no_fidelity_attribute() -> None:
    sampler = ISBOSampler(seed=0, fidelity_param=None, n_startup_trials=1)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 0.25, FIDELITY: 128})
    study.optimize(_objective, n_trials=1)
    assert "isbo:fidelity" not in study.trials[0].user_attrs


# -- plot_cost_history: constraints -----------------------------------------------------------
T0 = datetime.datetime(2026, 1, 1, 12, 0, 0)


def _constrained_study(
    values: list[float], constraints: list[float | None], direction: str, *, old_format: bool
) -> optuna.Study:
    """One completed trial per value, 1 s each, with constraint ``c`` (none where ``None``)."""
    study = optuna.create_study(direction=direction)
    for i, (value, c) in enumerate(zip(values, constraints, strict=True)):
        system_attrs: dict[str, Any] = {}
        if c is not None:
            # ``constraints_func`` writes a list; ``trial.set_constraint`` one key per value.
            system_attrs = {"constraints": [c]} if old_format else {"constraints:c": c}
        study.add_trial(
            FrozenTrial(
                number=i,
                trial_id=i,
                state=TrialState.COMPLETE,
                value=value,
                datetime_start=T0,
                datetime_complete=T0,
                params={"x": 0.5, FIDELITY: 64},
                distributions={"x": X, FIDELITY: B},
                user_attrs={"isbo:cost": 1.0},
                system_attrs=system_attrs,
                intermediate_values={},
            )
        )
    return study


@pytest.mark.parametrize("old_format", [False, True])
@pytest.mark.parametrize(
    ("direction", "values", "constraints", "best"),
    [
        # The infeasible 0.02 and 0.07 are better than any feasible value: never the best.
        (
            "minimize",
            [0.55, 0.42, 0.60, 0.07, 0.50, 0.02],
            [-1.0, 0.3, 0.0, 1.0, -0.5, 2.0],
            [0.55, 0.55, 0.55, 0.55, 0.50, 0.50],
        ),
        (
            "maximize",
            [0.3, 0.9, 0.4, 0.2],
            [0.0, 0.1, -2.0, math.nan],
            [0.3, 0.3, 0.4, 0.4],
        ),
        # Infeasible first: no best value until the first feasible trial.
        ("minimize", [0.1, 0.2, 0.3], [1.0, 0.0, -1.0], [math.nan, 0.2, 0.2]),
    ],
)
def test_the_best_value_line_follows_feasible_trials_only(
    old_format: bool,
    direction: str,
    values: list[float],
    constraints: list[float],
    best: list[float],
) -> None:
    study = _constrained_study(values, constraints, direction, old_format=old_format)
    figure = plot_cost_history(study)
    best_line = figure.data[-1]
    assert list(best_line.x) == [float(i + 1) for i in range(len(values))]
    assert list(best_line.y) == pytest.approx(best, nan_ok=True)
    # Optuna's own plot, whose feasibility rule (every value <= 0, NaN infeasible) is the one.
    optuna_best = optuna.visualization.plot_optimization_history(study).data[1]
    assert optuna_best.name == "Best Value"
    expected = [v if math.isfinite(v) else math.nan for v in optuna_best.y]
    assert list(best_line.y) == pytest.approx(expected, nan_ok=True)


def test_infeasible_trials_are_drawn_apart() -> None:
    values, constraints = [0.55, 0.42, 0.60, 0.07], [-1.0, 0.3, 0.0, 1.0]
    study = _constrained_study(values, constraints, "minimize", old_format=False)
    figure = plot_cost_history(study)
    feasible, infeasible, best_line = figure.data
    assert list(feasible.y) == [0.55, 0.60] and list(feasible.x) == [1.0, 3.0]
    assert [row[0] for row in feasible.customdata] == [0, 2]
    assert "Infeasible" in infeasible.name
    assert list(infeasible.y) == [0.42, 0.07] and list(infeasible.x) == [2.0, 4.0]
    assert [row[0] for row in infeasible.customdata] == [1, 3]
    # Not on the fidelity colour scale, and not the marker of trials without the fidelity.
    assert isinstance(infeasible.marker.color, str) and infeasible.marker.symbol == "x"
    assert best_line.mode == "lines"


def test_an_unconstrained_study_has_no_infeasible_trace() -> None:
    study = _constrained_study([0.5, 0.4], [None, None], "minimize", old_format=False)
    figure = plot_cost_history(study)
    assert [trace.name for trace in figure.data] == ["Objective Value", "Best Value"]


# -- plot_cost_history: pruned and failed trials ----------------------------------------------
def _study_with_pruned_trials() -> optuna.Study:
    """Ten trials of 10 s each (``isbo:cost``); the odd ones pruned, trial 9 failed too."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_int(FIDELITY, 32, 512, log=True)
        trial.set_user_attr("isbo:cost", 10.0)
        if trial.number == 9:
            raise RuntimeError("out of memory")
        if trial.number % 2:
            raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=10, catch=(RuntimeError,))
    return study


def test_pruned_and_failed_trials_add_their_cost_on_request() -> None:
    study = _study_with_pruned_trials()
    figure = plot_cost_history(study, include_pruned_and_failed=True)
    markers, best_line = figure.data
    # Completed trials 0, 2, 4, 6, 8 each come after every earlier trial's 10 s.
    assert list(markers.x) == [10.0, 30.0, 50.0, 70.0, 90.0]
    # The line runs to the 100 s that all ten trials took.
    assert best_line.x[-1] == 100.0
    completed = [t.value for t in study.trials if t.state == TrialState.COMPLETE]
    assert best_line.y[-1] == min(completed)


def test_pruned_and_failed_trials_add_no_cost_by_default() -> None:
    figure = plot_cost_history(_study_with_pruned_trials())
    assert list(figure.data[0].x) == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert figure.data[-1].x[-1] == 50.0


def test_include_pruned_and_failed_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="include_pruned_and_failed"):
        plot_cost_history(optuna.create_study(), include_pruned_and_failed="yes")  # type: ignore[arg-type]
