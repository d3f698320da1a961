"""Two checks of the main job's task (``examples/fashion_task.py``): live fidelity, separation.

``fidelity``
    One reasonable configuration (``GOOD_PARAMS``) trained for a fixed number of steps at each
    super-batch size ``B`` (``--b-values``) with several seeds (``--seeds``); within a seed
    every ``B`` runs in turn, so that changes in the machine's load reach all of them. Per
    ``B``: the median over seeds of the final training loss (cross-entropy of the whole
    training subset, eval mode), of the validation error, and of the cost ``isbo:cost``
    (seconds). The claim under test: at a fixed number of steps a larger ``B`` trains equally
    well or better, and costs more.
``separation``
    ``--n-configs`` random configurations (Optuna's ``RandomSampler`` over the task's search
    space), each trained once at the target fidelity, against ``GOOD_PARAMS`` trained with
    ``--good-seeds`` seeds: the test errors' median, interquartile range, minimum and maximum
    of both. A task worth tuning has a spread across configurations far above the seed-to-seed
    spread.

Each check prints a table and appends one JSON line to
``benchmarks/results/fashion_task_checks.jsonl`` (``--out``).

Usage::

    python benchmarks/check_fashion_task.py --quick          # smoke run, about 1.5 minutes
    python benchmarks/check_fashion_task.py                  # full sizes, one thread
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fashion_task  # noqa: E402  (lives in examples/)
from fashion_task import (  # noqa: E402
    FIDELITY,
    GOOD_PARAMS,
    N_STEPS,
    TARGET_SUPER_BATCH,
    TaskData,
    TrainingDiverged,
)

RESULTS = Path(__file__).resolve().parent / "results" / "fashion_task_checks.jsonl"


def spread(values: list[float]) -> dict[str, float]:
    """Median, interquartile range, minimum and maximum of ``values``."""
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    return {
        "median": float(median),
        "iqr": float(q3 - q1),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def check_fidelity(
    data: TaskData, b_values: list[int], seeds: list[int], n_steps: int
) -> dict[str, Any]:
    """Train ``GOOD_PARAMS`` at every ``B`` for every seed; per ``B`` medians over seeds."""
    runs: dict[int, list[dict[str, float]]] = {b: [] for b in b_values}
    for seed in seeds:
        for b in b_values:
            trial = optuna.trial.FixedTrial({})  # collects the user attributes of the report
            model, issgd = fashion_task.train(
                {**GOOD_PARAMS, FIDELITY: b}, data, seed=seed, n_steps=n_steps
            )
            issgd.report(trial)
            attrs = trial.user_attrs
            train_loss, _ = fashion_task.evaluate(model, data.train)
            _, val_error = fashion_task.evaluate(model, data.validation)
            runs[b].append(
                {
                    "train_loss": train_loss,
                    "val_error": val_error,
                    "cost": float(attrs["isbo:cost"]),
                    "is_steps": float(attrs.get("isbo:is_steps", 0)),
                }
            )
    rows = []
    for b in b_values:
        rows.append(
            {
                "B": b,
                **{
                    key: statistics.median(run[key] for run in runs[b])
                    for key in ("train_loss", "val_error", "cost", "is_steps")
                },
            }
        )
    print(f"\nlive fidelity: GOOD_PARAMS, {n_steps} steps, medians over {len(seeds)} seeds")
    print(f"{'B':>6} {'train loss':>11} {'val error':>10} {'cost s':>8} {'IS steps':>9}")
    for row in rows:
        print(
            f"{row['B']:6d} {row['train_loss']:11.4f} {row['val_error']:10.4f} "
            f"{row['cost']:8.2f} {row['is_steps']:9.0f}"
        )
    losses = [row["train_loss"] for row in rows]
    costs = [row["cost"] for row in rows]
    loss_ok = losses[-1] <= losses[0]
    cost_ok = all(later > earlier for earlier, later in zip(costs, costs[1:], strict=False))
    print(
        f"largest B trains equal or better than the smallest (median loss): {loss_ok}; "
        f"cost increasing in B: {cost_ok}"
    )
    return {
        "check": "fidelity",
        "n_steps": n_steps,
        "seeds": seeds,
        "rows": rows,
        "runs": {str(b): runs[b] for b in b_values},
        "largest_b_loss_not_worse": loss_ok,
        "cost_increasing": cost_ok,
    }


def check_separation(
    data: TaskData, n_configs: int, good_seeds: list[int], n_steps: int, seed: int
) -> dict[str, Any]:
    """Test errors of random configurations against the seed spread of ``GOOD_PARAMS``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    random_errors, n_diverged, configs = [], 0, []
    for i in range(n_configs):
        trial = study.ask()
        params = fashion_task.suggest_hyperparameters(trial, fidelity=False)
        try:
            model, _ = fashion_task.train(
                {**params, FIDELITY: TARGET_SUPER_BATCH}, data, seed=i, n_steps=n_steps
            )
            error = fashion_task.error_rate(model, data.test)
        except TrainingDiverged:
            error, n_diverged = fashion_task.DIVERGED_ERROR, n_diverged + 1
        study.tell(trial, error)
        random_errors.append(error)
        configs.append({**params, "test_error": error})
    good_errors = fashion_task.retrain_test_error(GOOD_PARAMS, data, good_seeds, n_steps=n_steps)
    random_spread, good_spread = spread(random_errors), spread(good_errors)
    print(f"\nseparation: test error at B = {TARGET_SUPER_BATCH}, {n_steps} steps")
    print(f"{'':28s} {'median':>7} {'IQR':>7} {'min':>7} {'max':>7}")
    for label, values in (
        (f"{n_configs} random configurations", random_spread),
        (f"GOOD_PARAMS, {len(good_seeds)} seeds", good_spread),
    ):
        print(
            f"{label:28s} {values['median']:7.4f} {values['iqr']:7.4f} {values['min']:7.4f} "
            f"{values['max']:7.4f}"
        )
    ratio = random_spread["iqr"] / good_spread["iqr"] if good_spread["iqr"] > 0 else float("inf")
    print(
        f"diverged random configurations: {n_diverged} of {n_configs}; "
        f"IQR ratio random / seeds: {ratio:.1f}"
    )
    return {
        "check": "separation",
        "n_steps": n_steps,
        "n_configs": n_configs,
        "good_seeds": good_seeds,
        "random": random_spread,
        "good": good_spread,
        "random_errors": random_errors,
        "good_errors": good_errors,
        "n_diverged": n_diverged,
        "iqr_ratio": ratio,
        "configs": configs,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the checks named by ``--checks``; return their records."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes (about 1.5 minutes)")
    parser.add_argument("--checks", nargs="+", default=["fidelity", "separation"])
    parser.add_argument("--b-values", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per B (fidelity)")
    parser.add_argument("--n-configs", type=int, default=None, help="random configurations")
    parser.add_argument("--good-seeds", type=int, default=None, help="seeds of GOOD_PARAMS")
    parser.add_argument("--n-steps", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=fashion_task.N_TRAIN)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random configurations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    quick = args.quick
    b_values = args.b_values or ([32, 128, 512] if quick else [32, 64, 128, 256, 512, 1024])
    n_seeds = args.seeds or (2 if quick else 3)
    n_configs = args.n_configs or (4 if quick else 20)
    n_good = args.good_seeds or (2 if quick else 5)
    n_steps = args.n_steps or (60 if quick else N_STEPS)

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = fashion_task.load_task_data(n_train=args.n_train, root=args.data_dir)
    print(f"data: {data.describe()}")
    common = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "data": data.describe(),
        "threads": args.threads,
    }
    records = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.checks:
        start = time.perf_counter()
        if name == "fidelity":
            record = check_fidelity(data, b_values, list(range(n_seeds)), n_steps)
        elif name == "separation":
            record = check_separation(data, n_configs, list(range(n_good)), n_steps, args.seed)
        else:
            parser.error(f"unknown check {name!r}; choose from fidelity, separation")
        record = {**common, **record, "seconds": time.perf_counter() - start}
        print(f"({record['seconds']:.0f} s)")
        with args.out.open("a") as file:
            file.write(json.dumps(record) + "\n")
        records.append(record)
    print(f"appended {len(records)} record(s) to {args.out}")
    return records


if __name__ == "__main__":
    main()
