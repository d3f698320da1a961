"""ISBOSampler against Optuna's sampler conformance suite, and basic contract checks."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase

from optuna_isbo import ISBOSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TestISBOSamplerConformance(BasicSamplerTestCase, RelativeSamplerTestCase):
    """Optuna's own checks, with the model running from the first completed trial.

    "mes" is used here because it is the cheaper acquisition per ``ask``; both acquisitions
    share everything else (encoding, model, optimizer, glue).
    """

    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        return lambda: ISBOSampler(n_startup_trials=0, acquisition="mes", seed=0)


def _fidelity_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    batch = trial.suggest_int("super_batch_size", 16, 256, log=True)
    trial.set_user_attr("isbo:cost", 1.0 + batch / 16)
    return (x - 0.5) ** 2 + 1.0 / batch


@pytest.mark.parametrize("acquisition", ["es", "mes"])
def test_same_seed_same_sequence(acquisition: str) -> None:
    def run(seed: int) -> list[dict[str, float]]:
        study = optuna.create_study(
            sampler=ISBOSampler(seed=seed, n_startup_trials=3, acquisition=acquisition)
        )
        study.optimize(_fidelity_objective, n_trials=6)
        return [t.params for t in study.trials]

    first = run(1)
    assert first == run(1)
    assert first != run(2)


def test_reseed_rng_changes_sequence() -> None:
    def run(reseed: bool) -> list[dict[str, float]]:
        sampler = ISBOSampler(seed=3, n_startup_trials=3, acquisition="mes")
        if reseed:
            sampler.reseed_rng()
        study = optuna.create_study(sampler=sampler)
        study.optimize(_fidelity_objective, n_trials=5)
        return [t.params for t in study.trials]

    assert run(False) != run(True)


def test_attrs_and_recommend_at_target() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=3, acquisition="mes")
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(lambda t: -_fidelity_objective(t), n_trials=6)
    model_trials = [t for t in study.trials if t.user_attrs.get("isbo:phase") == "model"]
    assert model_trials
    for t in model_trials:
        assert t.user_attrs["isbo:fidelity"] == t.params["super_batch_size"]
        assert t.user_attrs["isbo:predicted_cost_seconds"] > 0
        assert t.user_attrs["isbo:information_gain_nats"] >= 0
    best = sampler.recommend(study)
    assert best["super_batch_size"] == 256


def test_bad_arguments() -> None:
    for kwargs in (
        {"acquisition": "foo"},
        {"n_startup_trials": -1},
        {"n_fidelities": 0},
        {"target_fidelity": 0.0},
    ):
        with pytest.raises(ValueError):
            ISBOSampler(**kwargs)  # type: ignore[arg-type]


def test_multi_objective_is_rejected() -> None:
    study = optuna.create_study(
        sampler=ISBOSampler(n_startup_trials=0), directions=["minimize", "minimize"]
    )
    with pytest.raises(ValueError):
        study.optimize(
            lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=3
        )


def test_recommend_without_trials_raises() -> None:
    study = optuna.create_study(sampler=ISBOSampler())
    with pytest.raises(ValueError):
        study.sampler.recommend(study)  # type: ignore[attr-defined]
