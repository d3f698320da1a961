"""A few-second smoke test of ``benchmarks/bench_mf.py``: problems, one tiny run per cheap method
and the report. The benchmark itself is not a test (see ``shared/BENCHMARKS.md``)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution

from optuna_isbo.search_space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_mf  # noqa: E402
import mf_protocol  # noqa: E402


def test_fidelity_grid_is_isbo_grid() -> None:
    for problem in bench_mf.PROBLEMS.values():
        space = SearchSpace(
            {
                "x": FloatDistribution(0.0, 1.0),
                problem.fidelity: IntDistribution(1, problem.fidelity_high, log=True),
            },
            problem.fidelity,
            None,
        )
        assert problem.grid() == pytest.approx(space.fidelity_grid(mf_protocol.N_GRID).tolist())
        assert problem.unit(problem.fidelity_high) == 1.0


@pytest.mark.parametrize("name", sorted(bench_mf.PROBLEMS))
def test_problem_minimum_is_not_beaten_by_random_points(name: str) -> None:
    problem = bench_mf.PROBLEMS[name]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        trial = study.ask()
        params = problem.suggest(trial)
        assert problem.target(params) >= problem.f_min - 1e-9
        assert math.isfinite(problem.observe(params, 0.0, rng, 1.0))
        study.tell(trial, 0.0)


def test_codec_round_trip() -> None:
    problem = bench_mf.PROBLEMS["mixed"]
    codec = bench_mf.Codec(bench_mf.distributions_of(problem))
    for u in ([0.0] * codec.dim, [1.0] * codec.dim, [0.3, 0.8, 0.51, 0.4]):
        params = codec.decode(u)
        assert codec.decode(codec.encode(params)) == params


def test_runs_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    problem = bench_mf.PROBLEMS["aug-branin"]
    runs: list[dict[str, Any]] = []
    # The model-based methods (slow to recommend) run seed 0 only and recommend once, at the
    # end; seed 1 therefore lacks them and the report compares seed 0 alone.
    for method, seeds in (
        ("isbo-mes", (0,)),
        ("isbo-target", (0,)),
        ("botorch-mfmes", (0,)),
        ("gp-target", (0, 1)),
        ("random", (0, 1)),
        ("screen-topk", (0, 1)),
    ):
        for seed in seeds:
            run = bench_mf.run_one(
                problem, "steep", method, seed, budget=2.0, max_trials=4, recommend_every=4
            )
            assert 1 <= len(run["regret"]) <= 4
            assert run["cumulative_cost"][-1] >= min(run["budget_cost"], 4.0)
            assert all(r >= -1e-9 for r in run["regret"])
            runs.append(json.loads(json.dumps(run)))
    # The report sums the BoTorch loop's failed fits into its entry and says so.
    mfmes_run = next(r for r in runs if r["method"] == "botorch-mfmes")
    mfmes_run["fit_failures"] += 2
    summary = bench_mf.report(runs, tmp_path)
    entry = summary["aug-branin/steep"]
    assert entry["methods"]["botorch-mfmes"]["fit_failures"] == mfmes_run["fit_failures"]
    assert entry["methods"]["random"]["fit_failures"] == 0
    assert entry["seeds"] == [0]  # seed 1 lacks a method
    assert set(entry["methods"]) == {
        "isbo-mes",
        "isbo-target",
        "gp-target",
        "random",
        "screen-topk",
        "botorch-mfmes",
    }
    assert sum(entry["spending"]["random"]["trial_fraction"]) == pytest.approx(1.0)
    # isbo-target runs every trial at the target, as gp-target does.
    assert entry["spending"]["isbo-target"]["trial_fraction"][-1] == pytest.approx(1.0)
    assert (tmp_path / "mf.png").exists()
    out = capsys.readouterr().out
    assert "Coverage" in out
    assert (
        f"botorch-mfmes {mfmes_run['fit_failures']} / {mfmes_run['fallbacks']} / "
        f"{mfmes_run['recommend_failures']}" in out
    )
    assert "| aug-branin/steep | isbo-mes |" in out  # the goals table
    assert set(entry["goals"]["isbo-mes"]) >= {"best_median", "best_p90", "coverage_met"}


def test_extrapolation_coverage_counts_only_recommendations_without_target_evidence() -> None:
    """z = (true - value) / std of 0.5, 1.0, 5.0 for three extrapolations; a supported one
    (n_target 2) with z = 9 and a run without ``pred_n_target`` are left out."""
    run = {
        "method": "isbo-mes",
        "pred_value": [0.0, 0.0, 0.0, 0.0, None],
        "pred_std": [1.0, 2.0, 0.1, 1.0, None],
        "true_value": [0.5, 2.0, 0.5, 9.0, 1.0],
        "pred_n_target": [0, 0, 0, 2, None],
    }
    old_run = {**run, "pred_n_target": None}
    del old_run["pred_n_target"]
    result = bench_mf.extrapolation_coverage([run, old_run])["isbo-mes"]
    assert result["n"] == 3 and result["runs"] == 1
    assert result["coverage80"] == pytest.approx(2 / 3)  # |z| <= 1.2816 for 0.5 and 1.0
    assert result["beyond_4_std"] == pytest.approx(1 / 3)
    assert result["median_z"] == pytest.approx(1.0)


def test_goals_compare_isbo_with_every_peer() -> None:
    def final(median: float, p90: float) -> dict[str, Any]:
        return {"regret_at_fraction": {"1.0": {"median": median, "p90": p90}}}

    entry: dict[str, Any] = {
        "seeds": [0, 1, 2, 3],
        "methods": {"isbo-mes": final(0.1, 0.5), "gp": final(0.2, 0.4), "tpe": final(0.3, 0.9)},
        "cost_to_reach": {
            "gp": {"isbo-mes": {"fraction_of_peer_cost": 0.3}},
            "tpe": {"isbo-mes": {"fraction_of_peer_cost": 0.34}},
        },
        "coverage80": {"isbo-mes": {"fraction": 0.75}},
        "spending": {"isbo-mes": {"runs_with_one_model_level": 1}},
    }
    g = bench_mf.goals(entry, "isbo-mes")
    assert g["best_median"] and not g["best_p90"]  # gp's 90th percentile is lower
    assert g["best_peer_p90"] == ("gp", 0.4)
    assert g["peers_reached_in_a_third"] == 1  # 0.34 > 1/3
    assert g["n_peers"] == 2
    assert g["coverage_met"]
    entry["coverage80"]["isbo-mes"]["fraction"] = 1.0  # too wide an interval misses the goal
    assert not bench_mf.goals(entry, "isbo-mes")["coverage_met"]


def _told_at_target(driver: Any, rng: np.random.Generator, *points: list[float]) -> None:
    """Tells a BoTorch driver on AugmentedBranin these unit-cube ``x`` observed at the target."""
    problem = bench_mf.PROBLEMS["aug-branin"]
    for u in points:
        driver.X.append([*u, 1.0])
        driver.Y.append(problem.observe(driver.codec.decode(u), 1.0, rng, 1.0))


def test_botorch_loop_keeps_last_hyperparameters_when_a_fit_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed BoTorch fit neither stops the run nor leaves the model at its initial values."""
    import botorch.fit
    from botorch.exceptions.errors import ModelFittingError

    driver = bench_mf.BoTorchDriver(bench_mf.PROBLEMS["aug-branin"], "affine", "mes", 0)
    rng = np.random.default_rng(0)
    _told_at_target(driver, rng, [0.1, 0.2], [0.8, 0.3], [0.5, 0.9], [0.3, 0.6], [0.7, 0.7])
    first = driver._fit()
    fitted = {k: v.clone() for k, v in first.named_parameters()}

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ModelFittingError("All attempts to fit the model have failed.")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", fail)
    _told_at_target(driver, rng, [0.4, 0.4])
    second = driver._fit()
    assert driver.fit_failures == 1
    assert second.train_inputs[0].shape[0] == 6
    for name, value in second.named_parameters():
        assert value.detach().numpy() == pytest.approx(fitted[name].detach().numpy()), name
    # The outcome transform is the new data's, so the posterior reproduces the new point.
    with torch.no_grad():
        mean = float(second.posterior(torch.tensor([[0.4, 0.4, 1.0]])).mean)
    assert -mean == pytest.approx(driver.Y[-1], rel=0.05)


def test_botorch_loop_keeps_last_recommendation_when_its_step_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recommendation step that raises keeps the previous one; with none before, it raises."""
    from linear_operator.utils.errors import NotPSDError

    driver = bench_mf.BoTorchDriver(bench_mf.PROBLEMS["aug-branin"], "affine", "mes", 0)
    rng = np.random.default_rng(0)

    def fail(model: Any) -> Any:
        raise NotPSDError("Matrix not positive definite after repeatedly adding jitter.")

    _told_at_target(driver, rng, [0.1, 0.2], [0.8, 0.3], [0.5, 0.9])
    with monkeypatch.context() as patch:
        patch.setattr(driver, "_posterior_mean_max", fail)
        with pytest.raises(NotPSDError):
            driver.recommend()
    first = driver.recommend()
    _told_at_target(driver, rng, [0.3, 0.6])
    monkeypatch.setattr(driver, "_posterior_mean_max", fail)
    assert driver.recommend() is first
    assert driver.recommend_failures == 1


def test_prior_goals_reach_the_base_median_where_the_prior_curve_first_gets_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three seeds each, budget 9: the base ends at 0.5, 0.4 and 0.6 (median 0.5); the prior's
    runs reach 0.5 or below after costs 3, 3 and 6, so its median curve gets there at 3, a
    third of the budget, and ends lower on every seed."""

    def run(method: str, seed: int, costs: list[float], regrets: list[float]) -> dict:
        return {
            "problem": "p",
            "method": method,
            "seed": seed,
            "budget_cost": 9.0,
            "cumulative_cost": costs,
            "regret": regrets,
        }

    runs = [
        run("isbo-mes", 0, [3.0, 6.0, 9.0], [0.9, 0.7, 0.5]),
        run("isbo-mes", 1, [3.0, 6.0, 9.0], [0.8, 0.6, 0.4]),
        run("isbo-mes", 2, [3.0, 6.0, 9.0], [0.9, 0.8, 0.6]),
        run("isbo-prior", 0, [3.0, 6.0, 9.0], [0.5, 0.3, 0.2]),
        run("isbo-prior", 1, [3.0, 6.0, 9.0], [0.4, 0.3, 0.3]),
        run("isbo-prior", 2, [3.0, 6.0, 9.0], [0.7, 0.5, 0.4]),
    ]
    table = bench_mf.prior_goals(runs)
    row = table["p"]
    assert row["base_median"] == pytest.approx(0.5)
    assert row["median"] == pytest.approx(0.3)
    assert row["reach_fraction"] == pytest.approx(1 / 3)
    assert (row["lower"], row["higher"]) == (3, 0)
    assert "within a third of the budget on 1 of 1" in capsys.readouterr().out
