"""The BLAS thread cap around small optimizations."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from optuna_isbo import _blas
from optuna_isbo._blas import single_threaded_blas
from optuna_isbo.model import minimize_lbfgsb


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads() -> Iterator[list[int]]:
    if not _blas_threads():
        pytest.skip("no BLAS library loaded that threadpoolctl can control")
    with threadpool_limits(limits=2, user_api="blas"):
        yield _blas_threads()


def test_caps_inside_and_restores_after(two_blas_threads: list[int]) -> None:
    with single_threaded_blas():
        assert all(n == 1 for n in _blas_threads())
        with single_threaded_blas():
            assert all(n == 1 for n in _blas_threads())
        assert all(n == 1 for n in _blas_threads())
    assert _blas_threads() == two_blas_threads


class _RecordingController:
    """Stands in for threadpoolctl's controller: records when the cap is taken and released."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def limit(self, *, limits: int, user_api: str) -> _RecordingController:
        assert (limits, user_api) == (1, "blas")
        self.events.append("cap")
        return self

    def restore_original_limits(self) -> None:
        self.events.append("restore")


def test_overlapping_blocks_in_threads_share_one_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # Thread A enters, B enters, A leaves, B leaves: one cap, released only when B leaves.
    controller = _RecordingController()
    monkeypatch.setattr(_blas, "_controller", controller)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    events_while_b_alone: list[list[str]] = []

    def a() -> None:
        with single_threaded_blas():
            a_inside.set()
            assert b_inside.wait(5)
        a_left.set()

    def b() -> None:
        assert a_inside.wait(5)
        with single_threaded_blas():
            b_inside.set()
            assert a_left.wait(5)
            events_while_b_alone.append(list(controller.events))

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events_while_b_alone == [["cap"]]
    assert controller.events == ["cap", "restore"]


def test_restores_after_an_error(two_blas_threads: list[int]) -> None:
    def failing_loss(theta: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        minimize_lbfgsb(failing_loss, np.zeros(2), [(-1.0, 1.0)] * 2, max_iter=5)  # type: ignore[arg-type]
    assert _blas_threads() == two_blas_threads
