"""A diverged run reported as a completed trial at the worst value teaches ISBOSampler to avoid it.

The synthetic objective mimics a training run over ``lr`` in ``[1e-4, 1]`` (log scale) with the
super-batch size ``B`` in ``[16, 256]`` as the fidelity: any ``lr`` above ``DIVERGE_LR = 0.2``
"diverges" (value 1.0, the worst error rate, user attribute ``isbo:diverged``, and a tenth of a
full run's cost, since a diverged run stops early); below it, a smooth error with its minimum
at ``lr = 0.15``, just below the boundary, biased upwards at cheap fidelities.

The bound. The diverging share of the search space, on the log scale on which the startup
design and the acquisition optimizer draw ``lr``, is ``log(1 / 0.2) / log(1 / 1e-4) = 0.699 /
4 = 17.5 %``: a random search puts that share of its trials there. After the 10 startup trials
(which do sample it), the 15 model-based trials must put at most half of that share there,
i.e. at most 1 trial. With ``acquisition="mes"`` seed 0 (the one tested) puts 0 there.

What could make this pass for the wrong reason: a smooth error that already steers the model
away from high learning rates. The optimum therefore sits close to the boundary, and the
control used to prune the same diverged runs: the sampler then ignored them and put 13 of its
14 model-based trials above 0.2. Pruned trials now leave a mark (the target search sees them at
the worst value observed, the multi-fidelity search as pending points), so that control keeps
the sampler away too (``test_pruned_divergence_also_keeps_the_sampler_away``), and no Optuna
state is left in which a sampler is blind to the region. Without any divergence (the smooth
error continuing above 0.2) the current sampler also stays below 0.2 at seed 0 (0 of 15
model-based trials above it, measured), so this test alone no longer shows that the divergence
is what keeps it away; the marks are tested directly in ``tests/test_target_search.py``. (An
error still falling at the boundary, minimum at 0.3, made every sampler probe just above it:
64 % of the model-based trials, reported divergence or not.)

What may fail: ``acquisition="es"``. The cost model leaves diverged runs out (their truncated
cost would make the region look cheap), and still ES put 3 of the 15 model-based trials above
the boundary at seed 0 (1 at seed 1, 0 at seed 2) in an earlier version of the sampler:
entropy search keeps some information gain about the minimizer's location near the edge of the
good region. The current version passes at seed 0; with no measured margin, the case stays a
non-strict ``xfail``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from optuna_isbo import ISBOSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

LR_RANGE = (1e-4, 1.0)
DIVERGE_LR = 0.2
BEST_LR = 0.15
B_RANGE = (16, 256)
N_STARTUP, N_TRIALS = 10, 25
SEED = 0
DIVERGED_SHARE = math.log(LR_RANGE[1] / DIVERGE_LR) / math.log(LR_RANGE[1] / LR_RANGE[0])
MODEL_PHASES = ("model", "verify", "target")


def synthetic_training(trial: optuna.Trial) -> float:
    """Validation error of a simulated run; 1.0 with ``isbo:diverged`` above ``DIVERGE_LR``."""
    lr = trial.suggest_float("lr", *LR_RANGE, log=True)
    b = trial.suggest_int("super_batch_size", *B_RANGE, log=True)
    s = math.log(b / B_RANGE[0]) / math.log(B_RANGE[1] / B_RANGE[0])  # fidelity in [0, 1]
    full_cost = 1.0 + 15.0 * b / B_RANGE[1]
    if lr > DIVERGE_LR:
        trial.set_user_attr("isbo:cost", 0.1 * full_cost)
        trial.set_user_attr("isbo:diverged", True)
        return 1.0
    trial.set_user_attr("isbo:cost", full_cost)
    decades = math.log10(lr / BEST_LR)
    return 0.05 + 0.5 * (1.0 - math.exp(-0.5 * decades**2)) + 0.1 * (1.0 - s) ** 2


def run(
    objective: Callable[[optuna.Trial], float], acquisition: str
) -> tuple[ISBOSampler, optuna.Study, list[FrozenTrial]]:
    """A seeded study of ``N_TRIALS``; returns the sampler, the study and its model trials."""
    sampler = ISBOSampler(acquisition=acquisition, n_startup_trials=N_STARTUP, seed=SEED)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=N_TRIALS)
    model = [t for t in study.trials if t.user_attrs.get("isbo:phase") in MODEL_PHASES]
    return sampler, study, model


def diverged_share(trials: list[FrozenTrial]) -> float:
    return sum(t.params["lr"] > DIVERGE_LR for t in trials) / len(trials)


def test_diverged_share_of_the_space() -> None:
    assert DIVERGED_SHARE == pytest.approx(0.175, abs=1e-3)


@pytest.mark.parametrize(
    "acquisition",
    [
        "mes",
        pytest.param(
            "es",
            marks=pytest.mark.xfail(
                reason="ES still probes next to the diverging region (see the module docstring)",
                strict=False,
            ),
        ),
    ],
)
def test_sampler_moves_away_from_a_region_that_always_diverges(acquisition: str) -> None:
    sampler, study, model = run(synthetic_training, acquisition)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == N_TRIALS  # a diverged run is a completed trial ...
    for t in trials:  # ... at the worst value, and marked
        diverged = t.params["lr"] > DIVERGE_LR
        assert (t.user_attrs.get("isbo:diverged") is True) == diverged
        assert t.value == 1.0 or not diverged
    startup = [t for t in trials if t.user_attrs.get("isbo:phase") == "startup"]
    assert len(startup) == N_STARTUP and len(model) == N_TRIALS - N_STARTUP
    assert diverged_share(startup) > 0  # the startup design showed the sampler the region
    lrs = sorted(round(t.params["lr"], 4) for t in model)
    assert diverged_share(model) <= DIVERGED_SHARE / 2, lrs
    # ... and it found the good region below the boundary
    assert study.best_trial.params["lr"] <= DIVERGE_LR
    assert abs(math.log10(sampler.recommend(study)["lr"] / BEST_LR)) < 0.5, lrs


def test_pruned_divergence_also_keeps_the_sampler_away() -> None:
    """A diverged run pruned instead of reported (the example's old way) leaves a mark too."""

    def pruned_when_diverged(trial: optuna.Trial) -> float:
        value = synthetic_training(trial)
        if trial.user_attrs.get("isbo:diverged"):
            raise optuna.TrialPruned("the training loss diverged")
        return value

    _, study, model = run(pruned_when_diverged, "mes")
    assert any(t.state == TrialState.PRUNED for t in study.trials)
    lrs = sorted(round(t.params["lr"], 4) for t in model)
    assert diverged_share(model) <= DIVERGED_SHARE / 2, lrs


# -- the example task ------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_digits_cnn_completes_a_diverged_trial_at_the_worst_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("sklearn")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import digits_cnn
    from digits_data import load_digits_splits

    splits = load_digits_splits("sklearn")
    real_suggest = digits_cnn.suggest_hyperparameters

    def diverging(trial: optuna.Trial, *, fidelity: bool = True) -> dict[str, object]:
        # At a merely huge rate a ReLU CNN "dies" (finite loss); 1e30 overflows the loss.
        return {**real_suggest(trial, fidelity=fidelity), "lr": 1e30}

    monkeypatch.setattr(digits_cnn, "suggest_hyperparameters", diverging)
    study = optuna.create_study()
    study.optimize(digits_cnn.make_objective(splits), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == digits_cnn.DIVERGED_ERROR == 1.0
    assert trial.user_attrs[digits_cnn.DIVERGED_ATTR] is True
    assert 1 <= trial.user_attrs["isbo:diverged_step"] < digits_cnn.N_STEPS
    assert trial.user_attrs["isbo:steps"] == trial.user_attrs["isbo:diverged_step"]
    assert trial.user_attrs["isbo:cost"] > 0.0
    # train() alone still raises, as a TrialPruned for callers that do not handle it
    params = {"lr": 1e30, "momentum": 0.9, "weight_decay": 0.0, "width": 4}
    with pytest.raises(digits_cnn.TrainingDiverged, match="diverged at step") as info:
        digits_cnn.train({**params, digits_cnn.FIDELITY: 32}, splits, seed=0, n_steps=50)
    assert isinstance(info.value, optuna.TrialPruned)


@pytest.mark.parametrize(("loss", "marked"), [(1e6, True), (1e12, True), (1e12, False)])
def test_a_diverged_run_at_its_actual_loss_does_not_wreck_the_model(
    loss: float, marked: bool
) -> None:
    """A practitioner reports the loss the run ended at: one extreme value must not flatten
    the GP. The reference is the same study with the diverged runs reported at 1.0."""

    def at_actual_loss(trial: optuna.Trial) -> float:
        value = synthetic_training(trial)
        if trial.user_attrs.get("isbo:diverged"):
            if not marked:
                trial.set_user_attr("isbo:diverged", False)
            return loss
        return value

    sampler, study, _ = run(at_actual_loss, "mes")
    assert any(t.value == loss for t in study.trials)
    recommendation = sampler.recommendation(study)
    # The objective lies in [0.05, 0.65] below the boundary: the prediction must too, and
    # the recommendation must be as good as with the diverged runs at 1.0 (whose
    # recommendation is within half a decade of the optimum, see above).
    assert 0.0 < recommendation.value < 1.0
    assert recommendation.std < 0.5
    assert abs(math.log10(recommendation.params["lr"] / BEST_LR)) < 0.5
