"""The README's code runs as written, given what it says the user brings."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import torch
from torch.utils.data import TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"
N_STEPS = 20


def _python_block_after(heading: str) -> str:
    """The first fenced Python block after the Markdown heading ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.compile(r"```python\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no Python block after {heading!r} in the README"
    return match.group(1)


# Lightning's own pytree helper uses an API that torch deprecates; nothing of ours.
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*")
def test_readme_lightning_snippet_trains_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip(
        "lightning", reason="PyTorch Lightning is not installed (extra 'lightning')"
    )
    source = _python_block_after("#### PyTorch Lightning")
    # The run is the README's but shorter: its 500 steps (the sampler's and the Trainer's) take
    # Lightning tens of seconds on a CPU.
    assert source.count("500") == 2
    source = source.replace("500", str(N_STEPS))
    monkeypatch.chdir(tmp_path)  # the Trainer writes its logs and checkpoints here
    generator = torch.Generator().manual_seed(0)
    train_set = TensorDataset(
        torch.randn(256, 4, generator=generator), torch.randint(0, 3, (256,), generator=generator)
    )
    trial = optuna.create_study().ask()
    namespace = {
        "__name__": "readme_lightning",
        "make_model": lambda: torch.nn.Linear(4, 3),
        "train_set": train_set,
        "B": 64,
        "trial": trial,
    }
    exec(compile(source, f"{README}:PyTorch Lightning", "exec"), namespace)
    assert namespace["trainer"].global_step == N_STEPS  # type: ignore[attr-defined]
    assert "isbo:cost" in trial.user_attrs and trial.user_attrs["isbo:cost"] > 0
