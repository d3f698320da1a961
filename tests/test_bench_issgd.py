"""A few-second smoke test of the DataLoader mode of ``benchmarks/bench_issgd.py``
(``benchmarks/bench_issgd_loader.py``) at toy size: output structure, equal steps for every
method, the equal-time budget, the report and ``--from-json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_issgd_loader as bench  # noqa: E402
from small_nets import mlp  # noqa: E402  (on sys.path through the benchmark module)

STEPS = 30
SEEDS = 2
BATCH = 8


def toy_task(num_workers: int) -> bench.Task:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(96, 1, 8, 8, generator=generator)
    labels = torch.randint(10, (96,), generator=generator)
    return bench.Task(
        make_model=lambda: mlp(16, image_size=8),
        train_set=bench.AugmentedImages(images, labels, shift=1, flip=True),
        train_eval=(images, labels),
        test_eval=(images[:32], labels[:32]),
        lr=0.05,
        num_workers=num_workers,
        steps=STEPS,
        description="toy",
    )


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    torch.set_num_threads(1)
    methods = bench.build_methods(BATCH, [4], [4])
    return bench.run(
        {"toy": toy_task(num_workers=1)},
        methods,
        batch_size=BATCH,
        seeds=SEEDS,
        throughput_samples=256,
        throughput_repeats=1,
        log=lambda _: None,
    )


def test_methods_and_structure(results: dict[str, Any]) -> None:
    task = results["tasks"]["toy"]
    rows = task["methods"]
    assert list(rows) == ["uniform", "fidelity B=32", "speed B=32", "always B=32"]
    assert [row["switch"] for row in rows.values()] == ["fidelity", "fidelity", "speed", "always"]
    assert rows["uniform"]["B"] == BATCH
    keys = {"train_loss", "test_error", "seconds", "steps", "is_steps", "rules", "final_rule"}
    for row in rows.values():
        for view in ("equal_steps", "equal_time"):
            assert len(row[view]) == SEEDS
            for run in row[view]:
                assert keys <= set(run)
                assert sum(run["rules"].values()) == run["steps"]
    rates = task["throughput"]["samples_per_second"]
    assert set(rates) == {"sampler b", "plain b", "sampler B", "plain B"}
    assert all(rate > 0 for rate in rates.values())


def test_equal_steps_and_budget(results: dict[str, Any]) -> None:
    rows = results["tasks"]["toy"]["methods"]
    for row in rows.values():
        assert [run["steps"] for run in row["equal_steps"]] == [STEPS] * SEEDS
    assert all(run["is_steps"] == 0 for run in rows["uniform"]["equal_steps"])
    assert all(run["rules"] == {"uniform": STEPS} for run in rows["uniform"]["equal_steps"])
    always = rows["always B=32"]["equal_steps"]
    assert all(run["is_steps"] == STEPS for run in always)
    assert all(run["samples_loaded"] == STEPS * 32 for run in always)
    for label, row in rows.items():
        for run, base in zip(row["equal_time"], rows["uniform"]["equal_steps"], strict=True):
            if label == "uniform":
                assert run == base
            else:
                assert run["steps"] >= 1  # stopped by the uniform run's seconds, or the cap
                assert run["steps"] < 100 * STEPS or run["seconds"] < base["seconds"]


def test_report_and_from_json(
    results: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = bench.markdown(results)
    assert "**toy**" in text and "| speed B=32 |" in text and "Goals" in text
    path = tmp_path / "loader.json"
    path.write_text(json.dumps(results))
    bench.main(["--from-json", str(path)])
    assert capsys.readouterr().out.strip() == text.strip()


def test_uniform_matches_speed_while_off() -> None:
    """With IS never on, the speed switch at B > b trains on the very batches of uniform SGD."""
    task = toy_task(num_workers=0)
    task.steps = 10  # inside the 20 warm-up steps: IS cannot switch on
    uniform = bench.train_run(task, bench.Method("u", BATCH), batch_size=BATCH, seed=3, n_steps=10)
    speed = bench.train_run(
        task, bench.Method("s", 4 * BATCH, "speed"), batch_size=BATCH, seed=3, n_steps=10
    )
    assert speed["is_steps"] == 0 and speed["rules"] == {"warmup": 10}
    assert speed["train_loss"] == pytest.approx(uniform["train_loss"], rel=1e-6)


def test_augmentation_keeps_shape_and_is_identity_when_off() -> None:
    images = torch.rand(4, 1, 6, 6)
    labels = torch.arange(4)
    augmented = bench.AugmentedImages(images, labels, shift=2, flip=True)
    image, label = augmented[1]
    assert image.shape == (1, 6, 6) and int(label) == 1
    plain = bench.AugmentedImages(images, labels, shift=0, flip=False)
    assert torch.equal(plain[2][0], images[2])
