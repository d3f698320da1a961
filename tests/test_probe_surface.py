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
