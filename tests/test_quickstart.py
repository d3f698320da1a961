"""The per-trial line and the plots of the main job, ``examples/quickstart.py``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import quickstart  # noqa: E402
from fashion_task import BATCH_SIZE, FIDELITY, TARGET_SUPER_BATCH  # noqa: E402

DISTRIBUTION = IntDistribution(BATCH_SIZE, TARGET_SUPER_BATCH, log=True)


def _add(study: optuna.Study, value: float, fidelity: int, phase: str = "model") -> None:
    study.add_trial(
        create_trial(
            value=value,
            params={FIDELITY: fidelity},
            distributions={FIDELITY: DISTRIBUTION},
            user_attrs={"isbo:phase": phase, "isbo:cost": 1.0},
        )
    )


def test_print_trial_reports_the_best_value_at_the_target_fidelity(
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = optuna.create_study()
    best = f"best at B={TARGET_SUPER_BATCH}"
    expected = []
    # A cheap run's error is not comparable with the target's: it is never the running best.
    for value, fidelity, shown in [
        (0.10, BATCH_SIZE, "none yet at the target"),
        (0.30, TARGET_SUPER_BATCH, "0.3000"),
        (0.05, BATCH_SIZE, "0.3000"),
        (0.20, TARGET_SUPER_BATCH, "0.2000"),
        (0.25, TARGET_SUPER_BATCH, "0.2000"),
    ]:
        _add(study, value, fidelity)
        quickstart.print_trial(study, study.trials[-1])
        expected.append(f"{best} {shown}")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("s  ", 1)[1] for line in lines] == expected
    assert quickstart.best_at_target(study) == 0.20


def test_fidelity_plot_labels_the_fidelities_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to inspect them
    study = optuna.create_study()
    for i, fidelity in enumerate([32, 45, 100, 256, 512, 64]):
        _add(study, 0.1 * i, fidelity, phase="startup" if i < 3 else "model")
    paths = quickstart.plot(study, tmp_path)
    assert all(path.is_file() for path in paths)
    (axes,) = figures[1].axes
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels == ["32", "64", "128", "256", "512"]
    assert list(axes.get_yticks()) == [32, 64, 128, 256, 512]
    assert [t.get_text() for t in axes.yaxis.get_minorticklabels()] == []
    for figure in figures:
        close(figure)
