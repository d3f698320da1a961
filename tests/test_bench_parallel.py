"""A few-second smoke test of ``benchmarks/bench_parallel.py`` on SQLite (no server needed)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_parallel  # noqa: E402


def test_benchmark_on_sqlite(tmp_path: Path) -> None:
    record = bench_parallel.benchmark(
        f"sqlite:///{tmp_path / 'x.db'}", n_workers=2, asks_per_worker=2, n_trials=15, n_params=3
    )
    for key in ("single", "parallel", "ratios", "goal", "storage", "cpu_count", "n_trials"):
        assert key in record
    assert record["storage"] == "sqlite"
    for run, workers, asks in ((record["single"], 1, 4), (record["parallel"], 2, 2)):
        assert run["n_workers"] == workers and run["asks_per_worker"] == asks
        assert run["n_asks"] == 4 and len(run["asks"]) == 4
        assert run["states"] == {"COMPLETE": 4}
        assert all(a["wall_s"] > 0 and a["cpu_s"] >= 0 for a in run["asks"])
        for key in ("ask_wall_median_s", "ask_cpu_median_s", "ask_cpu_per_trial_s"):
            assert math.isfinite(run[key])
        assert run["trials_per_s"] > 0
        assert sum(stats["n"] for stats in run["by_phase"].values()) == 4
        assert run["duplicates_not_verification"] == 0
        assert run["concurrent_duplicates"] == 0
    assert {a["worker"] for a in record["parallel"]["asks"]} == {0, 1}
    assert record["goal"]["no_duplicates"]
    assert "| ratio 2/1 |" in bench_parallel.table(record)
