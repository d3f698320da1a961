"""Where the sampler's tensors live: the CPU, whatever the user's default device."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def on_cpu() -> contextlib.AbstractContextManager[Any]:
    """Context in which new tensors default to the CPU, whatever the user's default device.

    The model's tensors are small; the CPU is where they belong. ``torch.device`` as a context
    intercepts every torch call, which costs several microseconds per operation, so it is only
    entered when the user has moved the default device (``torch.set_default_device``).
    """
    if torch.get_default_device().type == "cpu":
        return contextlib.nullcontext()
    return torch.device("cpu")
