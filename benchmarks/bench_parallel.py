"""Cost of ``ask`` when several worker processes share one study in one database.

The goal it checks: with four workers on PostgreSQL, the total ``ask`` seconds per trial are at
most 1.2 times those of a single worker, and no two trials the workers create evaluate the same
configuration.

What it does. A study of ``--n-trials`` completed random trials (``--n-params`` parameters plus
the fidelity ``super_batch_size``; :func:`bench_overhead.search_space` and
:func:`bench_overhead._filled_study`) is written into the storage ``--storage``. Then worker
processes (``spawn``, torch with one thread each) load it, each with its own
``ISBOSampler(seed=worker_index)``, wait for each other at a barrier, and run ask/tell cycles:
``study.ask(distributions)`` (the sampler's relative sampling runs inside it), then ``tell``
with the filled study's synthetic value and cost (``isbo:cost``) of the proposed parameters, so
the study grows while the workers run and each sees the others' finished and running trials.
This is done twice, each time on a fresh copy of the filled study: once with one worker and
once with ``--workers`` workers (default 4). Both runs create the same number of trials: each
of the ``--workers`` workers asks ``--asks`` times (default 10) and the single worker asks
``--workers * --asks`` times, so the study grows over the same range of sizes in both.

What it measures, per ``ask``: the wall-clock seconds (``time.perf_counter``) and the CPU
seconds of the worker process (``time.process_time``, all its threads; the database server's
own CPU time is not included). Per run: the median and the mean (total seconds over trials) of
both, and the throughput, trials per wall-clock second from the first worker's first ``ask`` to
the last worker's last ``tell``. Then the ratios of the parallel run to the single worker.
The sampler picks its path per trial (``isbo:phase``: ``target``, ``model``, ``verify``, ...)
by the shares of the cost spent, the other workers' running trials included, and the paths
differ in cost, so the mix of paths can differ between the two runs; the medians per path are
reported too (a second table), and like is compared with like there.

Duplicates, among the trials the workers created: ``duplicates`` counts trials whose
parameters other than the fidelity equal those of an earlier worker trial;
``duplicates_not_verification`` leaves out a trial labelled ``isbo:phase = "verify"`` (the
sampler re-evaluating, on purpose, a configuration at the target fidelity) whose earlier
equals are not verifications; ``concurrent_duplicates`` counts pairs of trials that were
RUNNING at the same time (from creation in ``ask`` to ``tell``) with equal parameters other
than the fidelity. The goal needs ``duplicates_not_verification`` and ``concurrent_duplicates``
to be 0 (``duplicates`` is reported as well).

Cores. On a machine with fewer free cores than workers, the wall-clock time of an ``ask``
includes waiting for a core (and the database server competes for the cores too), so the wall
ratio overstates the cost of parallelism; the CPU seconds per ``ask`` are then the comparable
measure of the sampler's own work. Both are reported; the record holds the machine's core
count. Run it on an otherwise idle machine.

Output: a markdown table on stdout and one JSON line appended to ``--out`` (default
``benchmarks/results/parallel.jsonl``). The studies are deleted afterwards unless
``--keep-studies``.

A throwaway local PostgreSQL (the server binaries of Debian's ``postgresql`` package; as root,
the server runs as the ``postgres`` user, otherwise drop ``runuser -u postgres --`` and
``chown``)::

    PGBIN=/usr/lib/postgresql/15/bin; PGDIR=/tmp/isbo-pg
    mkdir -p $PGDIR && chown postgres $PGDIR
    runuser -u postgres -- $PGBIN/initdb -D $PGDIR/data -A trust -U isbo -E UTF8 --no-sync
    runuser -u postgres -- $PGBIN/pg_ctl -D $PGDIR/data -l $PGDIR/server.log -w \\
        -o "-h 127.0.0.1 -p 54329 -k $PGDIR" start

    python benchmarks/bench_parallel.py \\
        --storage postgresql+psycopg2://isbo@127.0.0.1:54329/postgres

    runuser -u postgres -- $PGBIN/pg_ctl -D $PGDIR/data -m fast stop && rm -rf $PGDIR

or let the script do the same around one run (``DIR`` must not exist; it is removed at the
end)::

    python benchmarks/bench_parallel.py --start-local-postgres /tmp/isbo-pg

A quick check (about a minute, not a measurement)::

    python benchmarks/bench_parallel.py --start-local-postgres /tmp/isbo-pg --n-trials 30 \\
        --asks 2 --out /tmp/parallel_smoke.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import math
import multiprocessing
import os
import pwd
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import (  # noqa: E402
    FIDELITY,
    _filled_study,
    search_space,
    synthetic_cost,
    synthetic_value,
)

from optuna_isbo import ISBOSampler  # noqa: E402

WORKER_ATTR = "bench:worker"
PHASE_ATTR = "isbo:phase"
GOAL_RATIO = 1.2
RESULTS = Path(__file__).resolve().parent / "results"


# -- storage -------------------------------------------------------------------------------------
def _storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for ``url``; SQLite waits up to a minute for a locked database."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _backend(url: str) -> str:
    """``dialect+driver`` of ``url``, without host, user or password."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    return parsed.drivername


# -- one worker ----------------------------------------------------------------------------------
def _worker(
    url: str,
    study_name: str,
    worker_index: int,
    n_asks: int,
    n_params: int,
    seed: int,
    barrier: Any,
    results: Any,
    barrier_timeout: float,
) -> None:
    """Run ``n_asks`` ask/tell cycles on the study and put the timings on ``results``."""
    try:
        import torch

        torch.set_num_threads(1)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = search_space(n_params)
        study = optuna.load_study(
            study_name=study_name, storage=_storage(url), sampler=ISBOSampler(seed=worker_index)
        )
        rng = np.random.default_rng([seed, worker_index, 1])
        barrier.wait(barrier_timeout)
        asks = []
        start = time.time()
        for _ in range(n_asks):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            trial = study.ask(distributions)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            trial.set_user_attr(WORKER_ATTR, worker_index)
            trial.set_user_attr("isbo:cost", synthetic_cost(trial.params))
            study.tell(trial, synthetic_value(trial.params, distributions, rng))
            asks.append({"trial": trial.number, "wall_s": wall1 - wall0, "cpu_s": cpu1 - cpu0})
        results.put(("ok", worker_index, {"start": start, "end": time.time(), "asks": asks}))
    except BaseException:
        results.put(("error", worker_index, traceback.format_exc()))
        with contextlib.suppress(Exception):
            barrier.abort()


# -- one run -------------------------------------------------------------------------------------
def _config(trial: FrozenTrial) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, v) for k, v in trial.params.items() if k != FIDELITY))


def duplicate_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """The duplicate counts of the module docstring over the trials with ``bench:worker``."""
    ours = sorted((t for t in trials if WORKER_ATTR in t.user_attrs), key=lambda t: t.number)
    seen: dict[tuple[tuple[str, Any], ...], list[FrozenTrial]] = {}
    duplicates = not_verification = 0
    for t in ours:
        earlier = seen.setdefault(_config(t), [])
        if earlier:
            duplicates += 1
            is_verification = t.user_attrs.get(PHASE_ATTR) == "verify" and not any(
                e.user_attrs.get(PHASE_ATTR) == "verify" for e in earlier
            )
            not_verification += not is_verification
        earlier.append(t)
    concurrent = 0
    for group in seen.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                a_end = a.datetime_complete or datetime.datetime.max
                b_end = b.datetime_complete or datetime.datetime.max
                assert a.datetime_start is not None and b.datetime_start is not None
                if a.datetime_start < b_end and b.datetime_start < a_end:
                    concurrent += 1
    return {
        "duplicates": duplicates,
        "duplicates_not_verification": not_verification,
        "concurrent_duplicates": concurrent,
    }


def _medians(asks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(asks),
        "ask_wall_median_s": statistics.median(a["wall_s"] for a in asks),
        "ask_cpu_median_s": statistics.median(a["cpu_s"] for a in asks),
    }


def run_workers(
    url: str,
    study_name: str,
    n_workers: int,
    asks_per_worker: int,
    n_params: int,
    seed: int,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run ``n_workers`` processes of ``asks_per_worker`` ask/tell cycles on an existing study.

    Returns the run's summary: medians and means of the per-``ask`` wall and CPU seconds,
    throughput, phases of the created trials, duplicate counts and the per-``ask`` timings.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n_workers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(url, study_name, i, asks_per_worker, n_params, seed, barrier, results, timeout),
        )
        for i in range(n_workers)
    ]
    for process in processes:
        process.start()
    outputs: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(outputs) < n_workers:
            try:
                status, index, payload = results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not finish in {timeout} s") from None
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a worker exited with code {dead[0]}") from None
                continue
            if status != "ok":
                raise RuntimeError(f"worker {index} failed:\n{payload}")
            outputs[index] = payload
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()

    study = optuna.load_study(study_name=study_name, storage=_storage(url))
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    asks = [
        {"worker": i, **a, "phase": by_number[a["trial"]].user_attrs.get(PHASE_ATTR)}
        for i, out in sorted(outputs.items())
        for a in out["asks"]
    ]
    wall = [a["wall_s"] for a in asks]
    cpu = [a["cpu_s"] for a in asks]
    span = max(o["end"] for o in outputs.values()) - min(o["start"] for o in outputs.values())
    return {
        "n_workers": n_workers,
        "asks_per_worker": asks_per_worker,
        "n_asks": len(asks),
        "ask_wall_median_s": statistics.median(wall),
        "ask_cpu_median_s": statistics.median(cpu),
        "ask_wall_per_trial_s": sum(wall) / len(wall),
        "ask_cpu_per_trial_s": sum(cpu) / len(cpu),
        "span_s": span,
        "trials_per_s": len(asks) / span,
        "phases": dict(Counter(str(a["phase"]) for a in asks)),
        "by_phase": {
            phase: _medians([a for a in asks if str(a["phase"]) == phase])
            for phase in sorted({str(a["phase"]) for a in asks})
        },
        "states": dict(Counter(t.state.name for t in trials if WORKER_ATTR in t.user_attrs)),
        **duplicate_counts(trials),
        "asks": asks,
    }


# -- the benchmark -------------------------------------------------------------------------------
def benchmark(
    url: str,
    n_workers: int = 4,
    asks_per_worker: int = 10,
    n_trials: int = 500,
    n_params: int = 10,
    seed: int = 0,
    keep_studies: bool = False,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """One worker against ``n_workers`` workers on fresh copies of one filled study in ``url``.

    The single worker asks ``n_workers * asks_per_worker`` times, each of the ``n_workers``
    workers ``asks_per_worker`` times. Returns the record appended to the results file: the
    settings, both runs (:func:`run_workers`), the ratios parallel / single and the goal check.
    """
    distributions = search_space(n_params)
    filled = _filled_study(
        optuna.samplers.RandomSampler(seed=seed), n_trials, seed=seed, distributions=distributions
    ).get_trials(deepcopy=False)
    prefix = f"bench-parallel-{uuid.uuid4().hex[:8]}"
    storage = _storage(url)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for workers, asks in ((1, n_workers * asks_per_worker), (n_workers, asks_per_worker)):
            name = f"{prefix}-w{workers}"
            optuna.create_study(study_name=name, storage=storage).add_trials(filled)
            runs[str(workers)] = run_workers(url, name, workers, asks, n_params, seed, timeout)
    finally:
        if not keep_studies:
            for workers in {1, n_workers}:
                with contextlib.suppress(KeyError):
                    optuna.delete_study(study_name=f"{prefix}-w{workers}", storage=storage)
    single, parallel = runs["1"], runs[str(n_workers)]
    ratios = {
        key: parallel[key] / single[key] if single[key] > 0 else math.nan
        for key in (
            "ask_wall_median_s",
            "ask_cpu_median_s",
            "ask_wall_per_trial_s",
            "ask_cpu_per_trial_s",
            "trials_per_s",
        )
    }
    no_duplicates = (
        parallel["duplicates_not_verification"] == 0 and parallel["concurrent_duplicates"] == 0
    )
    return {
        "benchmark": "parallel",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
        "storage": _backend(url),
        "cpu_count": os.cpu_count(),
        "n_trials": n_trials,
        "n_params": n_params,
        "n_workers": n_workers,
        "asks_per_worker": asks_per_worker,
        "seed": seed,
        "single": single,
        "parallel": parallel,
        "ratios": ratios,
        "goal": {
            "max_ratio": GOAL_RATIO,
            "cpu_per_trial_ok": ratios["ask_cpu_per_trial_s"] <= GOAL_RATIO,
            "wall_per_trial_ok": ratios["ask_wall_per_trial_s"] <= GOAL_RATIO,
            "no_duplicates": no_duplicates,
        },
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def table(record: dict[str, Any]) -> str:
    """The record as a markdown table: one row per run and one of ratios."""
    header = (
        "| workers | asks | median ask wall s | median ask CPU s | wall s / trial "
        "| CPU s / trial | trials / wall s | duplicates (not verification) | concurrent dup. |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for run in (record["single"], record["parallel"]):
        rows.append(
            f"| {run['n_workers']} | {run['n_asks']} | {run['ask_wall_median_s']:.3f} "
            f"| {run['ask_cpu_median_s']:.3f} | {run['ask_wall_per_trial_s']:.3f} "
            f"| {run['ask_cpu_per_trial_s']:.3f} | {run['trials_per_s']:.2f} "
            f"| {run['duplicates']} ({run['duplicates_not_verification']}) "
            f"| {run['concurrent_duplicates']} |"
        )
    r = record["ratios"]
    rows.append(
        f"| ratio {record['n_workers']}/1 | | {r['ask_wall_median_s']:.2f} "
        f"| {r['ask_cpu_median_s']:.2f} | {r['ask_wall_per_trial_s']:.2f} "
        f"| {r['ask_cpu_per_trial_s']:.2f} | {r['trials_per_s']:.2f} | | |"
    )
    rows.append("\n| workers | phase | asks | median ask wall s | median ask CPU s |")
    rows.append("|---|---|---|---|---|")
    for run in (record["single"], record["parallel"]):
        for phase, stats in run["by_phase"].items():
            rows.append(
                f"| {run['n_workers']} | {phase} | {stats['n']} "
                f"| {stats['ask_wall_median_s']:.3f} | {stats['ask_cpu_median_s']:.3f} |"
            )
    goal = record["goal"]
    footer = (
        f"\n{record['storage']}, {record['n_trials']} filled trials, {record['n_params']} "
        f"parameters, {record['cpu_count']} cores. Goal (ratio <= {goal['max_ratio']}, no "
        f"duplicates): CPU {'met' if goal['cpu_per_trial_ok'] else 'NOT met'}, wall "
        f"{'met' if goal['wall_per_trial_ok'] else 'NOT met'}, duplicates "
        f"{'none' if goal['no_duplicates'] else 'FOUND'}."
    )
    return header + "\n".join(rows) + "\n" + footer


# -- a throwaway local PostgreSQL ----------------------------------------------------------------
def _postgres_bindir() -> Path:
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb is None or shutil.which("pg_ctl") is None:
        raise SystemExit("initdb/pg_ctl not found (install the PostgreSQL server binaries)")
    return Path(initdb).resolve().parent


@contextlib.contextmanager
def local_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL cluster in ``directory`` on 127.0.0.1 for the ``with`` block; its URL.

    As root, the server runs as the ``postgres`` user. ``directory`` must not exist; it is
    removed, with the cluster, at the end.
    """
    if directory.exists():
        raise SystemExit(f"{directory} exists; give a new directory")
    bindir = _postgres_bindir()
    user: str | None = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            raise SystemExit("running as root and there is no `postgres` user") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = directory / "data"
    log = directory / "server.log"

    def run(*command: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True, user=user, timeout=120)
        if done.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()} {text}".strip())

    directory.mkdir(parents=True)
    try:
        if user is not None:
            shutil.chown(directory, user=user)
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "isbo", "-E", "UTF8",
            "--no-sync")  # fmt: skip
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", f"-h 127.0.0.1 -p {port} -k {directory}", "start")  # fmt: skip
        yield f"postgresql+psycopg2://isbo@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--storage", help="SQLAlchemy URL, e.g. postgresql+psycopg2://user@localhost:5432/db"
    )
    where.add_argument(
        "--start-local-postgres",
        type=Path,
        metavar="DIR",
        help="start a throwaway PostgreSQL cluster in DIR (new) for this run, then remove it",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--asks", type=int, default=10, help="asks per parallel worker")
    parser.add_argument("--n-trials", type=int, default=500, help="completed trials to start")
    parser.add_argument("--n-params", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--keep-studies", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "parallel.jsonl")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with contextlib.ExitStack() as stack:
        url = args.storage
        if args.start_local_postgres is not None:
            url = stack.enter_context(local_postgres(args.start_local_postgres))
        record = benchmark(
            url,
            n_workers=args.workers,
            asks_per_worker=args.asks,
            n_trials=args.n_trials,
            n_params=args.n_params,
            seed=args.seed,
            keep_studies=args.keep_studies,
            timeout=args.timeout,
        )
    print(table(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
