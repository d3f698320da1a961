"""What the two IS-SGD benchmarks share: per-seed ratios of a configuration to uniform SGD.

``bench_issgd.py`` (batches read by :class:`optuna_isbo.ISSGD`) and ``bench_issgd_loader.py``
(batches through a DataLoader) both keep, per task, ``rows[label][view]``: one result dict per
seed for each configuration ``label`` (``"uniform"`` the peer) and each ``view``
(``"equal_steps"`` or ``"equal_time"``), and report every configuration against uniform SGD.
"""

from __future__ import annotations

from typing import Any


def ratios(rows: dict[str, Any], label: str, view: str, key: str) -> list[float]:
    """Per-seed ``key`` of ``label`` over that of uniform, in ``view``."""
    return [
        run[key] / base[key]
        for run, base in zip(rows[label][view], rows["uniform"][view], strict=True)
        if base[key] > 0
    ]
