r"""LCBench (YAHPO Gym's surrogate): ISBOSampler against Optuna, Hyperband, DEHB and SMAC3.

LCBench (Zimmer, Lindauer & Hutter, TPAMI 2021) holds learning curves of MLPs trained for 52
epochs on OpenML tasks; YAHPO Gym (Pfisterer et al., AutoML-Conf 2022) ships an ONNX surrogate
of it, called here with ``onnxruntime`` (``pip install onnxruntime``; ``yahpo-gym`` itself pins
``numpy < 2``). The data folder (``model.onnx``, ``encoding.json``) comes from ``--data-dir``,
``$ISBO_LCBENCH_DIR``, or ``../shared/data/lcbench`` beside the project checkout.

The problem, per OpenML task
----------------------------
- ``x``: ``batch_size`` (16..512, log int), ``learning_rate`` (1e-4..1e-1, log),
  ``momentum`` (0.1..0.99), ``weight_decay`` (1e-5..1e-1), ``num_layers`` (1..5 int),
  ``max_units`` (64..1024, log int), ``max_dropout`` (0..1).
- Fidelity: ``epoch`` in 1..52 (log int), the target 52. The value is the validation error
  ``1 - val_accuracy / 100`` at that epoch; the cost is the surrogate's cumulative training
  seconds up to that epoch (a run stopped at epoch ``e`` costs what ``e`` epochs cost).
- Budget: ``--budget`` full runs (default 20), in seconds: ``budget`` times the median
  52-epoch training time of 2,000 random configurations of the task.
- Regret: validation error at epoch 52 of the recommendation minus the lowest one found among
  100,000 random configurations (cached in ``results/lcbench_fmin.json``); it can be slightly
  negative where a method beats that reference.

Methods
-------
``isbo-mes`` (multi-fidelity), ``isbo-target`` (fidelity pinned at 52, i.e.
``ISBOSampler(fidelity_param=None)``), ``gp-target``, ``tpe-target``, ``random-target``
(Optuna's samplers at epoch 52), ``tpe-hb`` (TPESampler with ``HyperbandPruner``, the curve
reported every epoch; recommendation: the best completed 52-epoch run, before any the best
value seen), and ``dehb`` and ``smac`` through the drivers of ``mf_peers.py`` where installed.
``isbo-prior`` is ``isbo-mes`` with a GP prior (``fit_prior``, fidelity included) pre-trained
on finished multi-fidelity studies of the other seven development tasks, one ``isbo-mes``
study each (seed 1000, kept in ``results/lcbench_meta_studies.db``); ``--fit-priors`` makes
them and writes the priors to ``results/lcbench_priors/``. ``isbo-prior-startup`` is the same
with the 10-trial startup design of a study without a prior.
Every method runs through the ask/tell harness of ``bench_mf.py`` (``run_one``) and its report.

Usage::

    python benchmarks/bench_lcbench.py --jobs 2 --seeds 0 1 2 3 4 \
        --out benchmarks/results/lcbench.jsonl
    python benchmarks/bench_lcbench.py --report benchmarks/results/lcbench.jsonl
    python benchmarks/bench_lcbench.py --fit-priors    # then --methods isbo-prior

Develop only on the eight development tasks of ``SOURCE.md`` (the default ``--tasks``); the
others judge a release.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from optuna_isbo import GPPrior, fit_prior

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mf  # noqa: E402
from harness import run_tasks  # noqa: E402
from mf_protocol import BestObserved, Driver, MFProblem, Rec  # noqa: E402

DEV_TASKS = ("7593", "34539", "126025", "126026", "146212", "167104", "167149", "168330")
EPOCHS = 52
FIDELITY = "epoch"
N_BUDGET_SAMPLES = 2_000
N_FMIN_SAMPLES = 100_000
METHODS = (
    "isbo-mes",
    "isbo-target",
    "gp-target",
    "tpe-target",
    "random-target",
    "tpe-hb",
    "dehb",
    "smac",
    "isbo-prior",
    "isbo-prior-startup",
)
RESULTS = Path(__file__).resolve().parent / "results"
# Pre-trained priors, one per held-out task (``--fit-priors``), and the studies behind them.
PRIORS = RESULTS / "lcbench_priors"
META_STORAGE = RESULTS / "lcbench_meta_studies.db"
META_SEED = 1000
# x columns of the surrogate's ``x_cont`` after ``epoch``, in its order.
COLUMNS = (
    "batch_size",
    "learning_rate",
    "momentum",
    "weight_decay",
    "num_layers",
    "max_units",
    "max_dropout",
)


def data_dir(option: str | None = None) -> Path:
    """The LCBench folder: ``option``, ``$ISBO_LCBENCH_DIR``, or the checkout's shared data."""
    if option:
        return Path(option)
    if os.environ.get("ISBO_LCBENCH_DIR"):
        return Path(os.environ["ISBO_LCBENCH_DIR"])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "lcbench"


class Surrogate:
    """The ONNX surrogate of one task: validation error and training seconds per epoch."""

    def __init__(self, folder: Path, task: str) -> None:
        import onnxruntime

        encoding = json.loads((folder / "encoding.json").read_text())
        codes = encoding["OpenML_task_id"]
        if task not in codes:
            raise ValueError(f"Unknown LCBench task {task!r}; known: {sorted(codes)}.")
        self.code = int(codes[task])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def evaluate(self, rows: np.ndarray, epochs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validation errors and cumulative training seconds, ``(n,)`` each.

        ``rows`` is ``(n, 7)`` in the order of ``COLUMNS``; ``epochs`` is ``(n,)``.
        """
        x_cont = np.column_stack([epochs, rows]).astype(np.float32)
        x_cat = np.full((len(rows), 1), self.code, dtype=np.int32)
        out = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0]
        return 1.0 - out[:, 1].astype(np.float64) / 100.0, out[:, 0].astype(np.float64)

    def at(self, params: dict[str, Any], epoch: int) -> tuple[float, float]:
        """Validation error and training seconds of ``params`` after ``epoch`` epochs."""
        row = np.array([[float(params[c]) for c in COLUMNS]])
        error, seconds = self.evaluate(row, np.array([epoch]))
        return float(error[0]), max(float(seconds[0]), 1e-3)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "batch_size": trial.suggest_int("batch_size", 16, 512, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-1, log=True),
        "momentum": trial.suggest_float("momentum", 0.1, 0.99),
        "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-1),
        "num_layers": trial.suggest_int("num_layers", 1, 5),
        "max_units": trial.suggest_int("max_units", 64, 1024, log=True),
        "max_dropout": trial.suggest_float("max_dropout", 0.0, 1.0),
    }


def random_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform configurations (log-uniform where the parameter is log) ``(n, 7)``."""

    def log_uniform(lo: float, hi: float) -> np.ndarray:
        return np.exp(rng.uniform(math.log(lo), math.log(hi), n))

    return np.column_stack(
        [
            np.clip(np.round(log_uniform(15.5, 512.5)), 16, 512),
            log_uniform(1e-4, 1e-1),
            rng.uniform(0.1, 0.99, n),
            rng.uniform(1e-5, 1e-1, n),
            rng.integers(1, 6, n),
            np.clip(np.round(log_uniform(63.5, 1024.5)), 64, 1024),
            rng.uniform(0.0, 1.0, n),
        ]
    )


@cache
def task_constants(folder: str, task: str) -> dict[str, Any]:
    """The reference minimum and the median seconds per epoch level of ``task`` (cached)."""
    cache_file = RESULTS / "lcbench_fmin.json"
    known = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    if task in known:
        return dict(known[task])
    surrogate = Surrogate(Path(folder), task)
    rng = np.random.default_rng(int(task))
    rows = random_rows(N_FMIN_SAMPLES, rng)
    errors = np.concatenate(
        [
            surrogate.evaluate(chunk, np.full(len(chunk), EPOCHS))[0]
            for chunk in np.array_split(rows, 20)
        ]
    )
    rows = rows[:N_BUDGET_SAMPLES]
    seconds = {
        str(e): float(np.median(surrogate.evaluate(rows, np.full(len(rows), e))[1]))
        for e in range(1, EPOCHS + 1)
    }
    entry = {"f_min": float(errors.min()), "median_seconds": seconds}
    known[task] = entry
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return entry


def problem(task: str, folder: Path) -> MFProblem:
    """The LCBench task as a ``bench_mf`` problem under the cost model ``source``."""
    surrogate = Surrogate(folder, task)
    constants = task_constants(str(folder), task)
    median_seconds = constants["median_seconds"]

    def epoch_of(s: float) -> int:
        return min(max(round(EPOCHS ** min(max(s, 0.0), 1.0)), 1), EPOCHS)

    return MFProblem(
        name=f"lcbench-{task}",
        suggest=suggest,
        observe=lambda params, s, rng, noise_scale: surrogate.at(params, epoch_of(s))[0],
        target=lambda params: surrogate.at(params, EPOCHS)[0],
        f_min=float(constants["f_min"]),
        fidelity=FIDELITY,
        fidelity_high=EPOCHS,
        source_cost=lambda s: float(median_seconds[str(epoch_of(s))]),
        run_cost=lambda params, s: surrogate.at(params, epoch_of(s))[1],
        noise="noiseless (surrogate)",
    )


class HyperbandDriver(Driver):
    """TPESampler with Optuna's HyperbandPruner; each trial reports its curve every epoch.

    ``ask`` runs the trial's curve up to the epoch where the pruner stops it (or 52) and returns
    that epoch as the fidelity, so the harness charges the training seconds up to it.
    """

    def __init__(self, problem: MFProblem, seed: int) -> None:
        self.problem = problem
        self.study = optuna.create_study(
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=EPOCHS),
        )
        self.best = BestObserved()
        self._trial: optuna.Trial | None = None
        self._params: dict[str, Any] = {}
        self._epoch = 0
        self._pruned = False

    def ask(self) -> tuple[dict[str, Any], int, str]:
        trial = self.study.ask()
        params = self.problem.suggest(trial)
        rng = np.random.default_rng(0)
        self._pruned = False
        epoch = 1
        for epoch in range(1, EPOCHS + 1):
            value = self.problem.observe(params, self.problem.unit(epoch), rng, 0.0)
            trial.report(value, epoch)
            if epoch < EPOCHS and trial.should_prune():
                self._pruned = True
                break
        self._trial, self._params, self._epoch = trial, params, epoch
        return params, epoch, "pruned" if self._pruned else "full"

    def tell(self, value: float, cost: float) -> None:
        assert self._trial is not None
        if self._pruned:
            self.study.tell(self._trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(self._trial, value)
        self.best.add(self._params, value, self._epoch >= EPOCHS)

    def recommend(self) -> Rec:
        chosen = self.best.best_target or self.best.best
        assert chosen is not None
        return Rec(chosen[1])


def make_driver(
    problem: MFProblem, cost_model: str, method: str, seed: int, budget: float, max_trials: int
) -> Driver:
    """``bench_mf.make_driver``, plus this benchmark's TPE + Hyperband (``tpe-hb``) and ISBO
    with the prior pre-trained on the other development tasks (``isbo-prior``)."""
    if method == "tpe-hb":
        return HyperbandDriver(problem, seed)
    if method.startswith("isbo-prior"):
        path = PRIORS / f"{problem.name}.json"
        if not path.exists():
            raise SystemExit(f"No prior at {path}: run with --fit-priors first.")
        # ``-startup``: the startup design a study without a prior has (10 trials, mostly
        # cheap), which teaches the cost model before the prior's proposals.
        options = {"n_startup_trials": 10} if method.endswith("-startup") else {}
        return bench_mf.OptunaDriver(
            problem, "isbo-mes", seed, prior=GPPrior.load(path), isbo_options=options
        )
    return bench_mf.make_driver(problem, cost_model, method, seed, budget, max_trials)


def meta_study(folder: Path, task: str, budget: float) -> optuna.Study:
    """A finished multi-fidelity study of ``task``: ``isbo-mes`` (seed ``META_SEED``, which no
    benchmark run uses) under ``budget`` full runs, kept in ``META_STORAGE``."""
    return bench_mf.kept_study(
        f"sqlite:///{META_STORAGE}",
        problem(task, folder),
        "source",
        "isbo-mes",
        META_SEED,
        budget,
        100_000,
        make_driver,
    )


def fit_priors(folder: Path, tasks: list[str], budget: float) -> None:
    """For each of ``tasks``, a prior pre-trained on the studies of the other development
    tasks (leave one task out), saved to ``PRIORS``."""
    PRIORS.mkdir(exist_ok=True)
    studies = {task: meta_study(folder, task, budget) for task in DEV_TASKS}
    for task in tasks:
        others = [study for name, study in studies.items() if name != task]
        start = time.perf_counter()
        prior = fit_prior(others, fidelity_param=FIDELITY, target_fidelity=EPOCHS, seed=0)
        prior.save(PRIORS / f"lcbench-{task}.json")
        print(
            f"[lcbench-{task}] prior from {len(others)} studies "
            f"({sum(len(s.trials) for s in others)} trials) in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )


def _task(task: tuple[str, str, str, int, float, int]) -> dict[str, Any]:
    folder, name, method, seed, budget, max_trials = task
    p = problem(name, Path(folder))
    return bench_mf.run_one(
        p, "source", method, seed, budget, max_trials, driver_factory=make_driver
    )


def goals(runs: list[dict[str, Any]], method: str = "isbo-mes") -> dict[str, Any]:
    """The robust-core goals on LCBench, per task and in total; printed as a table.

    Per task, over the seeds every method has: ``method``'s final median and 90th percentile
    regret against the best peer's; the cost at which ``method``'s median curve first reaches
    GPSampler's (``gp-target``) final median, as a share of the budget; the worst seed of
    ``method`` against random search's median (``random-target``).
    """
    tasks = sorted({r["problem"] for r in runs})
    table: dict[str, Any] = {}
    print(
        f"\n### Goals for {method}\n\n| task | {method} median [90th] | best peer median | "
        "best peer 90th | best median | best 90th | 90th / best peer's | reaches GPSampler's "
        "final median at | worst seed / random's median |\n|---|---|---|---|---|---|---|---|---|"
    )
    for task in tasks:
        group = [r for r in runs if r["problem"] == task]
        by: dict[str, dict[int, dict[str, Any]]] = {}
        for r in group:
            by.setdefault(r["method"], {})[r["seed"]] = r
        if method not in by:
            continue
        seeds = sorted(set.intersection(*(set(v) for v in by.values())))
        budget = float(np.median([r["budget_cost"] for r in group]))
        final = {
            m: np.array([bench_mf.regret_at(v[s], budget) for s in seeds]) for m, v in by.items()
        }
        peers = [m for m in final if m not in (method, "isbo-target", "isbo-prior")]
        med = {m: float(np.median(final[m])) for m in final}
        p90 = {m: float(np.percentile(final[m], 90)) for m in final}
        best_med = min(med[m] for m in peers)
        best_p90 = min(p90[m] for m in peers)
        reach = math.inf
        if "gp-target" in by:
            grid = np.linspace(budget / 200, budget, 200)
            curve = np.median(
                [[bench_mf.regret_at(by[method][s], c) for c in grid] for s in seeds], axis=0
            )
            hits = np.nonzero(curve <= med["gp-target"] + 1e-12)[0]
            reach = float(grid[hits[0]] / budget) if hits.size else math.inf
        random_median = med.get("random-target", math.nan)
        row = {
            "median": med[method],
            "p90": p90[method],
            "best_peer_median": best_med,
            "best_peer_p90": best_p90,
            "best_median": med[method] <= best_med,
            "best_p90": p90[method] <= best_p90,
            "p90_ratio": p90[method] / best_p90 if best_p90 > 0 else math.inf,
            "reach_gp_fraction": reach,
            "worst_over_random_median": float(final[method].max()) / random_median,
            "seeds": len(seeds),
        }
        table[task] = row
        print(
            f"| {task} | {row['median']:.4f} [{row['p90']:.4f}] | {best_med:.4f} | "
            f"{best_p90:.4f} | {'yes' if row['best_median'] else 'no'} | "
            f"{'yes' if row['best_p90'] else 'no'} | {row['p90_ratio']:.2f} | "
            f"{row['reach_gp_fraction']:.2f} of the budget | "
            f"{row['worst_over_random_median']:.2f} |"
        )
    n = len(table)
    print(
        f"\nBest median on {sum(r['best_median'] for r in table.values())} of {n}; best 90th "
        f"percentile on {sum(r['best_p90'] for r in table.values())} of {n}; 90th percentile "
        f"within 1.2x the best peer's on {sum(r['p90_ratio'] <= 1.2 for r in table.values())} "
        f"of {n}; GPSampler's final median reached in 1/3 of the budget on "
        f"{sum(r['reach_gp_fraction'] <= 1 / 3 for r in table.values())} of {n}; no seed worse "
        f"than random's median on "
        f"{sum(r['worst_over_random_median'] <= 1 for r in table.values())}"
        f" of {n}."
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEV_TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--budget", type=float, default=20.0, help="budget in full runs")
    parser.add_argument("--max-trials", type=int, default=100_000, help="a safety cap only")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "lcbench.jsonl")
    parser.add_argument("--report", type=Path, nargs="+", help="summarize JSONL files and exit")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--fit-priors",
        action="store_true",
        help="pre-train the priors of isbo-prior (leave one development task out) and exit",
    )
    args = parser.parse_args()
    if args.report:
        runs = bench_mf.load_runs(args.report)
        bench_mf.report(runs, args.out_dir)
        goals(runs)
        if any(r["method"] == "isbo-prior" for r in runs):
            bench_mf.prior_goals(runs)
        return
    folder = data_dir(args.data_dir)
    if not (folder / "model.onnx").exists():
        raise SystemExit(f"No LCBench surrogate at {folder}; pass --data-dir.")
    for name in args.tasks:
        task_constants(str(folder), name)  # computed once, before any worker starts
    bench_mf._init_worker()
    if args.fit_priors:
        fit_priors(folder, args.tasks, args.budget)
        return
    tasks = [
        (str(folder), name, method, seed, args.budget, args.max_trials)
        for seed in args.seeds
        for name in args.tasks
        for method in args.methods
    ]

    def describe(run: dict[str, Any]) -> str:
        n = len(run["cost"])
        return (
            f"seed {run['seed']} {run['problem']:16s} {run['method']:13s} trials {n:4d} "
            f"final regret {run['regret'][-1]:.4f} "
            f"method {run['sampler_seconds'] / n:.2f} s/trial wall {run['wall_seconds']:.0f} s"
        )

    run_tasks(
        _task,
        tasks,
        jobs=args.jobs,
        out=args.out,
        describe=describe,
        initializer=bench_mf._init_worker,
    )


if __name__ == "__main__":
    main()
