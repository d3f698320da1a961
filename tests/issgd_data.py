"""Data shared by the IS-SGD tests: a linear model with exactly known per-sample gradients."""

from __future__ import annotations

import torch
from torch import Tensor, nn

N_FEATURES = 5
N_CLASSES = 3


def skewed_data(n: int, seed: int) -> tuple[Tensor, Tensor, nn.Linear]:
    """Unit-norm inputs and a linear model that fits most samples well and a few badly.

    For a linear layer, the gradient of sample i's loss with respect to (W, bias) is
    delta_i (x_i, 1) with delta_i the logit gradient, so its norm is ||delta_i|| sqrt(|x_i|^2 + 1)
    = sqrt(2) * score_i for unit-norm inputs: the scores are exactly proportional to the
    per-sample parameter-gradient norms, which makes the variance formulas exact. A tenth of the
    labels are flipped away from the model's prediction, so their scores are large.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=generator)
    x = x / x.norm(dim=1, keepdim=True)
    model = nn.Linear(N_FEATURES, N_CLASSES)
    with torch.no_grad():
        model.weight.copy_(10.0 * torch.randn(N_CLASSES, N_FEATURES, generator=generator))
        model.bias.zero_()
        predicted = model(x).argmax(dim=1)
    y = predicted.clone()
    flipped = torch.rand(n, generator=generator) < 0.1
    y[flipped] = (predicted[flipped] + 1) % N_CLASSES
    return x, y, model
