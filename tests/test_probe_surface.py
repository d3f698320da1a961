"""What users see at the edges of the API: argument checks, warnings, attributes, the plot.

Covers the type checks of ``ISBOSampler``'s bool and object arguments; the warning for a
``fidelity_param`` that no completed trial suggests (a typo); the warning for a parameter that
leaves the joint search space when the search space changes during a study; the
``isbo:fidelity`` attribute of a trial whose every parameter ``enqueue_trial`` fixed; and
:func:`~optuna_isbo.visualization.plot_cost_history` on constrained studies (Optuna's
feasibility rule) and with the cost of pruned and failed trials.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from optuna_isbo import ISBOSampler

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
