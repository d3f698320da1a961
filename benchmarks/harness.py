"""What every benchmark script shares: running its tasks, in order or in worker processes, and
appending each result to a JSON-lines file as it arrives (a long benchmark can stop and resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

# Optuna's own samplers, by the benchmarks' method names.
OPTUNA_PEERS = {
    "gp": optuna.samplers.GPSampler,
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}


def optuna_peer(method: str, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler named ``method`` (``gp``, ``tpe`` or ``random``), seeded with ``seed``.

    Raises
    ------
    ValueError
        For any other name.
    """
    if method not in OPTUNA_PEERS:
        raise ValueError(f"Unknown method {method!r}; Optuna's peers are {list(OPTUNA_PEERS)}.")
    return OPTUNA_PEERS[method](seed=seed)


def run_tasks(
    run: Callable[[Any], dict[str, Any]],
    tasks: Sequence[Any],
    *,
    jobs: int,
    out: Path,
    describe: Callable[[dict[str, Any]], str],
    initializer: Callable[[], None] | None = None,
) -> None:
    """Run ``run(task)`` for every task and append each result to ``out`` as one JSON line.

    ``jobs > 1`` runs the tasks in that many spawned processes (each calls ``initializer``
    first; the calling process is the caller's to set up), results arriving in completion
    order. ``describe(result)`` is printed per result.
    """
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict[str, Any]) -> None:
        with out.open("a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(describe(result), flush=True)

    if jobs == 1:
        for task in tasks:
            write(run(task))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=initializer) as pool:
        for future in as_completed([pool.submit(run, task) for task in tasks]):
            write(future.result())
