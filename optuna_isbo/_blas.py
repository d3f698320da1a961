"""One BLAS thread while small optimizations run.

scipy's L-BFGS-B calls the BLAS bundled with scipy on vectors of a dozen entries. With the BLAS
pool at its default size, its worker threads spin between those calls and compete with torch's
own OpenMP threads for the cores: on a 2-core machine a 20-trial GP fit ran 3-5x slower than with
a single BLAS thread. :func:`single_threaded_blas` caps the BLAS pools of the process at one
thread for the duration of a ``with`` block and restores them afterwards.

The cap is process-wide (BLAS offers nothing finer) and best effort: OpenBLAS, for one, may
ignore a cap requested from a worker thread once the main thread has set its own. Nested and
concurrent blocks (several samplers in threads) share one cap, taken by the first block to enter
and released by the last to leave, so the original pool sizes are always the ones restored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_controller: ThreadpoolController | None = None
_active_blocks = 0
_limiter: Any = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Cap every BLAS library loaded in the process at one thread inside the block."""
    global _controller, _active_blocks, _limiter
    with _lock:
        if _active_blocks == 0:
            if _controller is None:
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _active_blocks += 1
    try:
        yield
    finally:
        with _lock:
            _active_blocks -= 1
            if _active_blocks == 0:
                _limiter.restore_original_limits()
                _limiter = None
