"""Conditional parameters (``optuna_isbo.conditional``): the joint space keeps them, the
encoding imputes them, the rules learnt from the trials say where they are active, and the
sampler proposes them from the model in both of its searches."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.search_space import intersection_search_space
from optuna.trial import FrozenTrial, create_trial

from optuna_isbo import ISBOSampler
from optuna_isbo.conditional import (
    conditional_names,
    learn_conditions,
    union_search_space,
)
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.target_search import TargetView
from optuna_isbo.trials import RELATIVE_PARAMS_KEY

OPTIMIZER = CategoricalDistribution(["adam", "sgd", "rmsprop"])
LR = FloatDistribution(1e-4, 1.0, log=True)
MOMENTUM = FloatDistribution(0.0, 0.99)
LAYERS = IntDistribution(1, 4)
WIDTH3 = IntDistribution(16, 256, log=True)


def _trial(params: dict[str, Any], value: float = 0.0) -> FrozenTrial:
    distributions: dict[str, BaseDistribution] = {
        "optimizer": OPTIMIZER,
        "lr": LR,
        "momentum": MOMENTUM,
        "layers": LAYERS,
        "width3": WIDTH3,
    }
    return create_trial(
        value=value, params=params, distributions={k: distributions[k] for k in params}
    )


def _optimizer_trials() -> list[FrozenTrial]:
    return [
        _trial({"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}),
        _trial({"optimizer": "adam", "lr": 0.001}),
        _trial({"optimizer": "sgd", "lr": 0.1, "momentum": 0.5}),
        _trial({"optimizer": "rmsprop", "lr": 0.003}),
    ]


def _space(trials: list[FrozenTrial]) -> SearchSpace:
    joint = union_search_space(trials)
    space = SearchSpace(joint, conditional=conditional_names(trials, joint))
    space.conditions = learn_conditions(space, trials)
    return space


def test_the_union_is_the_intersection_when_every_trial_has_every_parameter() -> None:
    trials = [_trial({"optimizer": "sgd", "lr": 0.01}), _trial({"optimizer": "adam", "lr": 0.1})]
    assert union_search_space(trials) == intersection_search_space(trials)
    assert list(union_search_space(trials)) == sorted(union_search_space(trials))


def test_the_union_keeps_missing_parameters_and_drops_changed_ones() -> None:
    trials = _optimizer_trials()
    widened = create_trial(
        value=0.0,
        params={"optimizer": "adam", "lr": 2.0},
        distributions={"optimizer": OPTIMIZER, "lr": FloatDistribution(1e-4, 2.0, log=True)},
    )
    assert set(union_search_space(trials)) == {"optimizer", "lr", "momentum"}
    assert set(union_search_space([*trials, widened])) == {"optimizer", "momentum"}
    assert conditional_names(trials, union_search_space(trials)) == {"momentum"}


def test_a_categorical_parent_is_learnt_and_applied() -> None:
    """``momentum`` exists only for SGD: the rule says so, the encoding imputes the centre for
    the other trials, ``snap`` moves a candidate's momentum there where it is inactive, and
    ``decode`` leaves it out."""
    trials = _optimizer_trials()
    space = _space(trials)
    condition = space.conditions["momentum"]
    assert condition.parent == "optimizer"
    assert condition.choices == {0, 2}  # adam, rmsprop
    X, _ = space.encode_trials(trials)
    column = space.param_columns["momentum"].start
    assert X[1, column] == 0.5 and X[3, column] == 0.5
    assert X[0, column] == pytest.approx(0.9 / 0.99)
    candidates = space.sample_sobol(64, seed=0)
    adam_or_rmsprop = candidates[:, space.param_columns["optimizer"]].argmax(dim=1) != 1
    assert bool(adam_or_rmsprop.any()) and bool((~adam_or_rmsprop).any())
    assert torch.all(candidates[adam_or_rmsprop, column] == 0.5)
    assert torch.all(candidates[~adam_or_rmsprop, column] != 0.5)
    for x in candidates:
        params = space.decode(x, 1.0)
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
    assert space.without_inactive({"optimizer": "adam", "lr": 0.1, "momentum": 0.3}) == {
        "optimizer": "adam",
        "lr": 0.1,
    }


def test_a_numeric_parent_is_learnt_as_a_threshold() -> None:
    """``width3`` exists for three layers or more. Four trials on each side are not enough
    (a random split of 8 trials into 4 and 4 is separated by a threshold with probability
    2 / 70 = 0.029 > 0.01); five are (2 / 252 = 0.008)."""
    without = [_trial({"layers": 1 + i % 2}) for i in range(5)]
    with_it = [_trial({"layers": 3 + i % 2, "width3": 32 + 8 * i}) for i in range(5)]
    assert _space(without[:4] + with_it[:4]).conditions == {}
    space = _space(without + with_it)
    condition = space.conditions["width3"]
    assert condition.parent == "layers" and condition.above
    for layers in range(1, 5):
        params = space.decode(space.encode_params({"layers": layers, "width3": 100})[0], 1.0)
        assert ("width3" in params) == (layers >= 3)


def test_a_rule_the_trials_contradict_is_not_learnt() -> None:
    """A trial with ``optimizer == "adam"`` and a momentum: no parent separates the trials,
    so the momentum is proposed everywhere (and encoded as imputed where it is missing)."""
    trials = [*_optimizer_trials(), _trial({"optimizer": "adam", "lr": 0.02, "momentum": 0.1})]
    space = _space(trials)
    assert space.conditional == {"momentum"} and space.conditions == {}
    for x in space.sample_sobol(16, seed=1):
        assert "momentum" in space.decode(x, 1.0)


def test_the_target_view_fills_what_a_trial_lacks() -> None:
    study = optuna.create_study()
    for t in _optimizer_trials():
        study.add_trial(t)
    view = TargetView(study, lambda t: True, fill={"momentum": 0.495})
    listed = view._get_trials(deepcopy=False)
    assert [t.params["momentum"] for t in listed] == [0.9, 0.495, 0.5, 0.495]
    assert all(t.distributions["momentum"] == MOMENTUM for t in listed)
    # The study itself is untouched.
    assert "momentum" not in study.trials[1].params


def _objective(trial: optuna.Trial) -> float:
    optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    if optimizer == "sgd":
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        step = math.log10(lr / (1.0 - momentum))
        return 0.1 * (step - math.log10(0.3)) ** 2 + (momentum - 0.9) ** 2
    return 2.0 + (math.log10(lr) - math.log10(0.003)) ** 2


@pytest.mark.parametrize("fidelity", [False, True])
def test_the_sampler_proposes_the_conditional_parameter_from_its_model(fidelity: bool) -> None:
    """After the startup, every SGD trial's momentum is the one its search proposed (stored
    with the trial's chosen parameters), and no other trial has one."""

    def objective(trial: optuna.Trial) -> float:
        value = _objective(trial)
        if fidelity:
            epochs = trial.suggest_int("epochs", 1, 27, log=True)
            value += 0.1 * (1.0 - math.log(epochs) / math.log(27))
        return value

    sampler = ISBOSampler(
        seed=0, fidelity_param="epochs" if fidelity else None, warn_independent_sampling=False
    )
    study = optuna.create_study(sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "left the joint space" warning
        study.optimize(objective, n_trials=24)
    for t in study.trials:
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")
    late = [t for t in study.trials if t.user_attrs.get("isbo:phase") != "startup"][-8:]
    proposed = [t for t in late if "momentum" in t.params]
    # SGD's values are below 2, Adam's above: the late trials go to SGD.
    assert len(proposed) >= 4
    for t in proposed:
        assert _chosen(t)["momentum"] == t.params["momentum"]


def _chosen(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters the sampler chose for ``trial`` (before the objective ran)."""
    n_chunks = trial.system_attrs[f"{RELATIVE_PARAMS_KEY}:n"]
    text = "".join(trial.system_attrs[f"{RELATIVE_PARAMS_KEY}:{i}"] for i in range(n_chunks))
    return dict(json.loads(text))
