"""Run several worker processes on one study, each asking ISBOSampler for its next trial.

Optuna scales out by running many worker processes against one storage: every worker loads the
same study, and the sampler of each worker sees the trials that the others have finished
(observations) and are still running (pending points). ISBOSampler keeps no state outside the
storage, so workers can join, leave or crash at any time.

Usage::

    # A real database server (PostgreSQL or MySQL): the way to run across machines.
    python examples/parallel.py --storage postgresql+psycopg2://user:password@host/db --workers 4
    python examples/parallel.py --storage mysql+pymysql://user:password@host/db --workers 4
    # One machine, no server: SQLite, or a JournalStorage file (any argument without "://").
    python examples/parallel.py --storage sqlite:///isbo_parallel.db --workers 2
    python examples/parallel.py --storage isbo_parallel.log --workers 2
    # Watch the study while it runs.
    optuna-dashboard sqlite:///isbo_parallel.db

On other machines, start workers with ``--workers 1`` (or more) and the same ``--storage`` and
``--study-name``; each process runs its share of ``--n-trials``. Give every worker its own seed:
workers with equal seeds draw equal start-up designs.

The default objective is a synthetic multi-fidelity function (no training, about a second per
trial): hyperparameters ``lr`` and ``momentum`` and the fidelity ``super_batch_size`` ``B`` in
``[16, 1024]``. With :math:`s = \\log(B / 16) / \\log(1024 / 16)`, :math:`u = (\\log_{10} lr +
1.5) / 1.5` and :math:`v = (m - 0.9) / 0.3`, it returns

.. math::

    f = 0.05 + 0.25 (1 - e^{-(u^2 + v^2)}) + 0.1 (1 - s)^2 + \\epsilon,\\quad
    \\epsilon \\sim \\mathcal{N}(0, (0.03 (1 - s) + 0.003)^2),

so a low fidelity is biased and noisy, and its simulated cost ``1 + 15 B / 1024`` seconds,
written to the user attribute ``"isbo:cost"``, grows with ``B``; the worker sleeps
``--time-scale`` times that cost. ``--objective digits`` instead trains a small MLP on
scikit-learn's 8x8 digits with :class:`~optuna_isbo.ISSGD` (``B`` is its super-batch size),
whose measured cost ``ISSGD.report`` writes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

FIDELITY_PARAM = "super_batch_size"
WORKER_ATTR = "worker"


def make_storage(storage: str, heartbeat_interval_seconds: int | None = None) -> BaseStorage:
    """Open ``storage``: an SQLAlchemy URL (RDB storage), else a JournalStorage file path.

    With ``heartbeat_interval_seconds``, an RDB storage records a heartbeat for every running
    trial; a trial whose worker died is marked FAIL after ``3 * heartbeat_interval_seconds``
    without one and retried once by another worker.
    """
    if "://" not in storage:
        return JournalStorage(JournalFileBackend(storage))
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        # Writers queue for SQLite's single lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    if heartbeat_interval_seconds is None:
        return RDBStorage(storage, engine_kwargs=engine_kwargs)
    return RDBStorage(
        storage,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval_seconds,
        grace_period=3 * heartbeat_interval_seconds,
        failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
    )


def make_sampler(
    name: str, seed: int | None, n_startup_trials: int
) -> optuna.samplers.BaseSampler:
    """The sampler of one worker: ``"isbo"`` (default), or a peer for comparison."""
    if name == "isbo":
        from optuna_isbo import ISBOSampler

        return ISBOSampler(n_startup_trials=n_startup_trials, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'isbo', 'tpe' or 'random', got {name!r}.")


def synthetic_objective(trial: optuna.Trial, time_scale: float) -> float:
    """The synthetic multi-fidelity function of the module docstring (minimize)."""
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.99)
    super_batch_size = trial.suggest_int(FIDELITY_PARAM, 16, 1024, log=True)
    s = math.log(super_batch_size / 16) / math.log(1024 / 16)
    u = (math.log10(lr) + 1.5) / 1.5
    v = (momentum - 0.9) / 0.3
    noise_std = 0.03 * (1.0 - s) + 0.003
    noise = np.random.default_rng(trial.number).normal(0.0, noise_std)
    cost_seconds = 1.0 + 15.0 * super_batch_size / 1024
    time.sleep(time_scale * cost_seconds)
    trial.set_user_attr("isbo:cost", cost_seconds)
    return 0.05 + 0.25 * (1.0 - math.exp(-(u**2 + v**2))) + 0.1 * (1.0 - s) ** 2 + noise


def digits_objective(trial: optuna.Trial) -> float:
    """Validation error of a one-hidden-layer MLP on the 8x8 digits, trained with ISSGD."""
    import torch
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    from optuna_isbo import ISSGD

    batch_size, n_steps = 32, 300
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.99)
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    super_batch_size = trial.suggest_int(FIDELITY_PARAM, batch_size, 1024, log=True)

    digits = load_digits()
    inputs = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    targets = torch.tensor(digits.target, dtype=torch.long)
    # A fixed permutation: every trial trains and validates on the same split.
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    train, val = order[:1200], order[1200:]

    torch.manual_seed(trial.number)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    issgd = ISSGD(
        model,
        TensorDataset(inputs[train], targets[train]),
        batch_size=batch_size,
        super_batch_size=super_batch_size,
        seed=trial.number,
    )
    for batch_inputs, batch_targets, weights in issgd.batches(n_steps):
        optimizer.zero_grad()
        loss = issgd.weighted_loss(model(batch_inputs), batch_targets, weights)
        loss.backward()
        optimizer.step()
    issgd.report(trial)
    with torch.no_grad():
        predictions = model(inputs[val]).argmax(dim=1)
    return float((predictions != targets[val]).float().mean())


def make_objective(name: str, time_scale: float) -> Callable[[optuna.Trial], float]:
    if name == "synthetic":
        return lambda trial: synthetic_objective(trial, time_scale)
    if name == "digits":
        return digits_objective
    raise ValueError(f"objective must be 'synthetic' or 'digits', got {name!r}.")


def run_worker(
    storage: str,
    study_name: str,
    rank: int,
    n_trials: int,
    sampler_name: str,
    seed: int | None,
    n_startup_trials: int,
    objective_name: str,
    time_scale: float,
    heartbeat_interval_seconds: int | None,
) -> None:
    """Body of one worker process: load the study and run ``n_trials`` trials."""
    import torch

    # One thread per worker: the workers themselves fill the cores.
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=make_storage(storage, heartbeat_interval_seconds),
        sampler=make_sampler(sampler_name, seed, n_startup_trials),
    )
    objective = make_objective(objective_name, time_scale)

    def tagged_objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, rank)
        return objective(trial)

    study.optimize(tagged_objective, n_trials=n_trials)


def split_trials(n_trials: int, n_workers: int) -> list[int]:
    """Trials per worker, as equal as possible, summing to ``n_trials``."""
    return [n_trials // n_workers + (rank < n_trials % n_workers) for rank in range(n_workers)]


def _display_storage(storage: str) -> str:
    if "://" not in storage:
        return f"journal file {storage}"
    from sqlalchemy.engine import make_url

    return make_url(storage).render_as_string(hide_password=True)


def summarize(study: optuna.Study, elapsed_seconds: float, n_workers: int) -> str:
    """A few lines on what the workers did."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    lines = [
        f"study {study.study_name!r}: {len(trials)} trials "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.FAIL]} failed, "
        f"{states[TrialState.PRUNED]} pruned, {states[TrialState.RUNNING]} running) "
        f"in {elapsed_seconds:.1f} s with {n_workers} workers"
    ]
    per_worker = Counter(t.user_attrs.get(WORKER_ATTR) for t in trials)
    lines.append(
        "trials per worker: "
        + ", ".join(f"{rank}: {count}" for rank, count in sorted(per_worker.items(), key=str))
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return "\n".join(lines)
    costs = [t.user_attrs["isbo:cost"] for t in complete if "isbo:cost" in t.user_attrs]
    if costs:
        lines.append(f"total cost: {sum(costs):.1f} s over {len(costs)} trials")
    fidelities = [t.params[FIDELITY_PARAM] for t in complete if FIDELITY_PARAM in t.params]
    if fidelities:
        lines.append(
            f"{FIDELITY_PARAM} chosen: min {min(fidelities)}, "
            f"median {statistics.median(fidelities):g}, max {max(fidelities)}"
        )
    best = study.best_trial
    lines.append(f"best value {best.value:.4f} (trial {best.number}): {best.params}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--storage",
        default="sqlite:///isbo_parallel.db",
        help="SQLAlchemy URL (postgresql+psycopg2://..., mysql+pymysql://..., sqlite:///...) "
        "or the path of a JournalStorage file",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start")
    parser.add_argument("--n-trials", type=int, default=40, help="trials over all workers")
    parser.add_argument("--study-name", default="isbo-parallel")
    parser.add_argument("--sampler", choices=["isbo", "tpe", "random"], default="isbo")
    parser.add_argument("--n-startup-trials", type=int, default=10)
    parser.add_argument(
        "--seed", type=int, default=None, help="worker k uses seed + k (default: random seeds)"
    )
    parser.add_argument("--objective", choices=["synthetic", "digits"], default="synthetic")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.05,
        help="the synthetic objective sleeps this times its simulated cost",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=None,
        help="RDB storages only: fail (and retry once) trials of dead workers",
    )
    args = parser.parse_args(argv)
    for name in ("workers", "n_trials"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.heartbeat_seconds is not None and "://" not in args.storage:
        parser.error("--heartbeat-seconds needs an RDB storage URL")

    study = optuna.create_study(
        storage=make_storage(args.storage), study_name=args.study_name, load_if_exists=True
    )
    print(f"running {args.workers} workers on {_display_storage(args.storage)}")
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=run_worker,
            args=(
                args.storage,
                args.study_name,
                rank,
                n_trials,
                args.sampler,
                None if args.seed is None else args.seed + rank,
                args.n_startup_trials,
                args.objective,
                args.time_scale,
                args.heartbeat_seconds,
            ),
            name=f"isbo-worker-{rank}",
        )
        for rank, n_trials in enumerate(split_trials(args.n_trials, args.workers))
    ]
    start = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed_seconds = time.perf_counter() - start

    print(summarize(study, elapsed_seconds, args.workers))
    if args.sampler == "isbo" and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        from optuna_isbo import ISBOSampler

        # Any process can recommend from the storage alone: the sampler holds no state.
        recommended = ISBOSampler(seed=args.seed).recommend(study)
        print(f"recommended configuration (retrain at the target fidelity): {recommended}")
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        print(f"workers that exited with an error: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
