r"""Constrained studies: ISBOSampler against Optuna's GPSampler, both with ``set_constraint``.

Problems (minimization of the target-fidelity value, simulated cost in ``isbo:cost``):

- ``budget-mf``: ``x, y`` in the unit square, fidelity ``B`` in ``[16, 256]`` (log int,
  ``s = log(B / 16) / log 16``), value ``-(x + 2y) + 0.3 (1 - s) sin(6x)`` (biased at cheap
  fidelities), constraint ``x + y - 1 <= 0``. The unconstrained optimum ``(1, 1)`` is
  infeasible; the constrained one is ``(0, 1)`` with value -2. Cost ``1 + 30 s^2`` (x10).
- ``lcbench-time``: LCBench task 7593 (``bench_lcbench.py``), fidelity ``epoch``, value the
  validation error, constraint: the full 52-epoch training time, estimated from the run as
  ``time(e) * 52 / e``, at most the median full-run time of random configurations. The
  reference optimum is the best of 100,000 random feasible configurations.

Methods: ``isbo`` (``ISBOSampler``, multi-fidelity), ``gp-target`` (``GPSampler`` with the
fidelity pinned at the target). Each run has a budget of 25 target evaluations' cost. After
every trial, the recommendation (ISBO: ``sampler.recommendation``; GPSampler: the best feasible
observed target value) is scored by its true target value and feasibility.

Usage::

    python benchmarks/bench_constraints.py --jobs 2 --seeds 0 1 2 3 4 5 6 7 8 9
    python benchmarks/bench_constraints.py --report benchmarks/results/constraints.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_lcbench as lcb  # noqa: E402
from harness import run_tasks  # noqa: E402

from optuna_isbo import ISBOSampler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = 25.0
N_STARTUP = 10
METHODS = ("isbo", "gp-target")
PROBLEMS = ("budget-mf", "lcbench-time")


class BudgetMF:
    fidelity, low, high = "super_batch_size", 16, 256
    f_min = -2.0

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {"x": trial.suggest_float("x", 0.0, 1.0), "y": trial.suggest_float("y", 0.0, 1.0)}

    def unit(self, b: int) -> float:
        return math.log(b / self.low) / math.log(self.high / self.low)

    def evaluate(self, p: dict[str, Any], b: int) -> tuple[float, float, float]:
        """Value, constraint and cost of a run at fidelity ``b``."""
        s = self.unit(b)
        value = -(p["x"] + 2.0 * p["y"]) + 0.3 * (1.0 - s) * math.sin(6.0 * p["x"])
        return value, p["x"] + p["y"] - 1.0, 10.0 * (1.0 + 30.0 * s * s)

    def truth(self, p: dict[str, Any]) -> tuple[float, bool]:
        return -(p["x"] + 2.0 * p["y"]), p["x"] + p["y"] <= 1.0

    def target_cost(self) -> float:
        return 310.0


class LCBenchTime:
    fidelity, low, high = "epoch", 1, lcb.EPOCHS
    task = "7593"

    def __init__(self) -> None:
        folder = lcb.data_dir()
        self.surrogate = lcb.Surrogate(folder, self.task)
        constants = lcb.task_constants(str(folder), self.task)
        self.limit = float(constants["median_seconds"][str(lcb.EPOCHS)])
        rng = np.random.default_rng(7)
        rows = lcb.random_rows(100_000, rng)
        errors, seconds = self.surrogate.evaluate(rows, np.full(len(rows), lcb.EPOCHS))
        self.f_min = float(errors[seconds <= self.limit].min())

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return lcb.suggest(trial)

    def unit(self, e: int) -> float:
        return math.log(e) / math.log(self.high)

    def evaluate(self, p: dict[str, Any], e: int) -> tuple[float, float, float]:
        error, seconds = self.surrogate.at(p, e)
        return error, seconds * self.high / e - self.limit, seconds

    def truth(self, p: dict[str, Any]) -> tuple[float, bool]:
        error, seconds = self.surrogate.at(p, self.high)
        return error, seconds <= self.limit

    def target_cost(self) -> float:
        return self.limit


def make_problem(name: str) -> Any:
    return BudgetMF() if name == "budget-mf" else LCBenchTime()


def run_one(name: str, method: str, seed: int) -> dict[str, Any]:
    problem = make_problem(name)
    if method == "isbo":
        sampler: optuna.samplers.BaseSampler = ISBOSampler(
            seed=seed, fidelity_param=problem.fidelity
        )
    else:
        sampler = optuna.samplers.GPSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    budget = BUDGET * problem.target_cost()
    spent = 0.0
    best: tuple[float, dict[str, Any]] | None = None  # best feasible observed at the target
    out: dict[str, list[Any]] = {
        k: []
        for k in ("cumulative_cost", "fidelity", "infeasible", "regret", "rec_feasible", "phase")
    }
    while spent < budget:
        trial = study.ask()
        params = problem.suggest(trial)
        if method == "isbo":
            b = trial.suggest_int(problem.fidelity, problem.low, problem.high, log=True)
        else:
            b = problem.high
        value, constraint, cost = problem.evaluate(params, b)
        trial.set_constraint("c", constraint)
        trial.set_user_attr("isbo:cost", cost)
        study.tell(trial, value)
        spent += cost
        if b == problem.high and constraint <= 0 and (best is None or value < best[0]):
            best = (value, params)
        if method == "isbo" and len(study.trials) > 1:
            assert isinstance(sampler, ISBOSampler)
            chosen = sampler.recommendation(study).params
        else:
            chosen = best[1] if best is not None else params
        true_value, feasible = problem.truth(chosen)
        out["cumulative_cost"].append(spent)
        out["fidelity"].append(b)
        out["infeasible"].append(constraint > 0)
        out["regret"].append(true_value - problem.f_min)
        out["rec_feasible"].append(bool(feasible))
        out["phase"].append(_phase(study, method, problem.fidelity, problem.high))
    return {"problem": name, "method": method, "seed": seed, "budget": budget, **out}


def _phase(study: optuna.Study, method: str, fidelity: str, target: int) -> str:
    """What proposed the latest trial: ``design`` for a space-filling startup point (GPSampler's
    first ``N_STARTUP`` trials; ISBO's startup design and its target search's own startup,
    which runs until ``N_STARTUP`` trials are at the target), else ``isbo:phase``/``model``."""
    trials = study.trials
    if method != "isbo":
        return "design" if len(trials) <= N_STARTUP else "model"
    phase = str(trials[-1].user_attrs.get("isbo:phase", "unknown"))
    if phase == "startup":
        return "design"
    at_target = sum(1 for t in trials[:-1] if t.params.get(fidelity) == target)
    return "design" if phase == "target" and at_target < N_STARTUP else phase


def _task(task: tuple[str, str, int]) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    return run_one(*task)


def report(runs: list[dict[str, Any]]) -> None:
    latest = {(r["problem"], r["method"], r["seed"]): r for r in runs}
    print(
        "| problem | method | runs | final regret median [90th] | recommendations feasible "
        "(all trials) | infeasible share after startup, median | infeasible share of the "
        "trials no design proposed, median | trials |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for problem in PROBLEMS:
        for method in METHODS:
            rs = [r for k, r in latest.items() if k[0] == problem and k[1] == method]
            if not rs:
                continue
            final = np.array([r["regret"][-1] for r in rs])
            feasible = sum(all(r["rec_feasible"][N_STARTUP:]) for r in rs)
            share = [
                float(np.mean(r["infeasible"][N_STARTUP:]))
                for r in rs
                if len(r["infeasible"]) > N_STARTUP
            ]
            # Each method's own space-filling design left out (``_phase``); runs that recorded
            # no phases, or have no trial past their design, are skipped.
            past_design = [
                [i for p, i in zip(r["phase"], r["infeasible"], strict=True) if p != "design"]
                for r in rs
                if "phase" in r
            ]
            searched = [float(np.mean(x)) for x in past_design if x]
            searched_cell = "-"
            if searched:
                searched_cell = f"{np.median(searched):.2f} ({len(searched)} runs)"
            trials = np.median([len(r["regret"]) for r in rs])
            print(
                f"| {problem} | {method} | {len(rs)} | {np.median(final):.4g} "
                f"[{np.percentile(final, 90):.4g}] | {feasible}/{len(rs)} | "
                f"{np.median(share):.2f} ({len(share)} runs) | {searched_cell} | {trials:.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "constraints.jsonl")
    parser.add_argument("--report", type=Path, nargs="+")
    args = parser.parse_args()
    if args.report:
        report([json.loads(line) for path in args.report for line in path.open()])
        return
    tasks = [(p, m, s) for s in args.seeds for p in args.problems for m in args.methods]
    if "lcbench-time" in args.problems:
        lcb.task_constants(str(lcb.data_dir()), LCBenchTime.task)

    def describe(run: dict[str, Any]) -> str:
        return (
            f"{run['problem']} {run['method']} seed {run['seed']}: regret {run['regret'][-1]:.4g}"
            f" feasible {run['rec_feasible'][-1]} trials {len(run['regret'])}"
        )

    run_tasks(_task, tasks, jobs=args.jobs, out=args.out, describe=describe)


if __name__ == "__main__":
    main()
