"""Many worker processes on one study: the way Optuna users scale ISBOSampler out.

The PostgreSQL tests get their server from the ``postgres_url`` fixture (tests/conftest.py);
the JournalStorage test needs no server and always runs.
"""

from __future__ import annotations

import importlib.util
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

if importlib.util.find_spec("optuna_isbo.sampler") is None:
    pytest.skip("optuna_isbo.sampler (ISBOSampler) is not installed", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "parallel.py"
VICTIM_ATTR = "test:victim_pid"


def _make_sampler(seed: int) -> optuna.samplers.BaseSampler:
    from optuna_isbo import ISBOSampler

    # Three start-up trials, so that most trials of these short studies come from the model.
    return ISBOSampler(n_startup_trials=3, seed=seed)


def _overlapping_pairs(trials: list[FrozenTrial]) -> list[tuple[FrozenTrial, FrozenTrial]]:
    """Pairs of trials whose [datetime_start, datetime_complete] intervals intersect."""
    pairs = []
    for a, b in itertools.combinations(trials, 2):
        assert a.datetime_start and a.datetime_complete and b.datetime_start
        assert b.datetime_complete
        if a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete:
            pairs.append((a, b))
    return pairs


def _run_example(storage: str, study_name: str, n_workers: int, n_trials: int) -> str:
    command = [
        sys.executable, str(EXAMPLE), "--storage", storage, "--study-name", study_name,
        "--workers", str(n_workers), "--n-trials", str(n_trials), "--sampler", "isbo",
        "--n-startup-trials", "3", "--seed", "0", "--time-scale", "0.5",
    ]  # fmt: skip
    # Trials of 0.6-8 s: a worker that spawns seconds after the other (importing torch on a
    # loaded machine) still finds it running, so that the overlap checked below happens.
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _check_parallel_study(storage: str, study_name: str, n_workers: int, n_trials: int) -> None:
    stdout = _run_example(storage, study_name, n_workers, n_trials)
    assert f"{n_trials} trials ({n_trials} complete" in stdout
    assert "recommended configuration" in stdout

    storage_object: str | optuna.storages.BaseStorage = storage
    if "://" not in storage:
        storage_object = JournalStorage(JournalFileBackend(storage))
    trials = optuna.load_study(study_name=study_name, storage=storage_object).get_trials()
    assert len(trials) == n_trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"] for t in trials} == set(range(n_workers))
    assert all(t.user_attrs["isbo:cost"] > 0 for t in trials)
    overlapping = _overlapping_pairs(trials)
    # Each trial sleeps at least 0.6 s and every worker runs several: without any concurrency
    # the duplicate check below would be vacuous.
    assert overlapping, "no two trials ran at the same time"
    for a, b in overlapping:
        assert a.params != b.params, f"trials {a.number} and {b.number} ran with equal params"


@pytest.mark.slow
def test_workers_on_postgres(postgres_url: str) -> None:
    study_name = f"parallel-{uuid.uuid4().hex}"
    try:
        _check_parallel_study(postgres_url, study_name, n_workers=3, n_trials=6)
    finally:
        optuna.delete_study(study_name=study_name, storage=postgres_url)


@pytest.mark.slow
def test_workers_on_journal_file(tmp_path: Path) -> None:
    _check_parallel_study(str(tmp_path / "journal.log"), "parallel", n_workers=2, n_trials=6)


def _heartbeat_storage(url: str) -> RDBStorage:
    return RDBStorage(
        url,
        heartbeat_interval=1,
        grace_period=2,
        failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
    )


def _suggest(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -1.0, 1.0)
    super_batch_size = trial.suggest_int("super_batch_size", 16, 256, log=True)
    trial.set_user_attr("isbo:cost", 0.01 * super_batch_size)
    return x**2


def _victim(url: str, study_name: str) -> None:
    """A worker that hangs in its first trial until it is killed."""
    study = optuna.load_study(
        study_name=study_name, storage=_heartbeat_storage(url), sampler=_make_sampler(seed=100)
    )

    def objective(trial: optuna.Trial) -> float:
        value = _suggest(trial)
        trial.set_user_attr(VICTIM_ATTR, os.getpid())
        time.sleep(600)
        return value

    study.optimize(objective, n_trials=1)


def _is_original_victim_trial(trial: FrozenTrial) -> bool:
    # RetryFailedTrialCallback copies user attributes to the retry, so tell them apart.
    return VICTIM_ATTR in trial.user_attrs and (
        RetryFailedTrialCallback.retried_trial_number(trial) is None
    )


def _survivor(url: str, study_name: str, seed: int, min_complete: int) -> None:
    """A worker that runs until ``min_complete`` trials are complete and no trial is stale."""
    study = optuna.load_study(
        study_name=study_name, storage=_heartbeat_storage(url), sampler=_make_sampler(seed=seed)
    )

    def objective(trial: optuna.Trial) -> float:
        value = _suggest(trial)
        time.sleep(0.1)
        return value

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
        victim_pending = any(
            _is_original_victim_trial(t) and t.state == TrialState.RUNNING for t in trials
        ) or not any(_is_original_victim_trial(t) for t in trials)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if n_complete >= min_complete and not victim_pending and not waiting:
            study.stop()

    # n_trials only bounds a run that never sees the victim fail; the callback ends it.
    study.optimize(objective, n_trials=200, callbacks=[stop_when_done])


@pytest.mark.slow
def test_killed_worker_fails_by_heartbeat_and_others_finish(postgres_url: str) -> None:
    study_name = f"heartbeat-{uuid.uuid4().hex}"
    study = optuna.create_study(study_name=study_name, storage=postgres_url)
    context = multiprocessing.get_context("spawn")
    victim = context.Process(target=_victim, args=(postgres_url, study_name))
    survivors = [
        context.Process(target=_survivor, args=(postgres_url, study_name, seed, 4))
        for seed in (1, 2)
    ]
    processes = [victim, *survivors]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 60
        victim_trials: list[FrozenTrial] = []
        while not victim_trials:
            assert time.monotonic() < deadline, "the victim never started its trial"
            assert victim.is_alive(), "the victim exited before it was killed"
            time.sleep(0.2)
            victim_trials = [
                t
                for t in study.get_trials(states=(TrialState.RUNNING,))
                if VICTIM_ATTR in t.user_attrs
            ]
        (victim_trial,) = victim_trials
        victim.kill()
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL

        for survivor in survivors:
            survivor.join(max(deadline - time.monotonic(), 1.0))
            assert survivor.exitcode == 0, f"survivor exit code {survivor.exitcode}"

        trials = study.get_trials()
        assert trials[victim_trial.number].state == TrialState.FAIL
        retries = [
            t
            for t in trials
            if RetryFailedTrialCallback.retried_trial_number(t) == victim_trial.number
        ]
        # failed_trial_callback ran and a survivor ran the retry to completion.
        assert [t.state for t in retries] == [TrialState.COMPLETE]
        assert retries[0].params == victim_trial.params
        others = [t for t in trials if t.number != victim_trial.number]
        assert all(t.state == TrialState.COMPLETE for t in others)
        assert len(others) >= 4
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        optuna.delete_study(study_name=study_name, storage=postgres_url)
