"""Tiny classifiers for the examples and benchmarks on the digits of ``examples/digits_data.py``.

A helper module of ``examples/`` (not a script, and not part of the ``optuna_isbo`` package);
the benchmarks import it after putting ``examples/`` on ``sys.path``. Both networks are a plain
:class:`torch.nn.Sequential` whose output is the ``(n, n_classes)`` logits, for inputs of shape
``(n, 1, image_size, image_size)``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["mlp", "small_cnn"]


def small_cnn(
    width: int = 16,
    *,
    image_size: int = 28,
    n_classes: int = 10,
    in_channels: int = 1,
    dropout: float = 0.0,
    head: Literal["global", "flatten"] = "global",
) -> nn.Sequential:
    """Two 3x3 convolution blocks and a linear classifier.

    ``conv(width) - ReLU - maxpool(2) - conv(2 width) - ReLU - head - [dropout] -
    linear(n_classes)``. With ``head="global"`` the head is a global average pool, which works
    for any ``image_size >= 2`` (28 for MNIST, 8 for scikit-learn's digits) but discards where
    in the image a feature is. With ``head="flatten"`` it is a second ``maxpool(2)`` and a
    flatten, so the classifier sees the ``(image_size // 4)^2`` map of each channel: more
    weights, and much faster training on digits (with SGD at learning rate 0.05, momentum
    0.9 and minibatches of 32 MNIST images: about 6 % validation error after 200 steps, where
    the global head is still above 70 % after 300).

    Parameters
    ----------
    width
        Channels of the first convolution (the second has ``2 * width``).
    image_size
        Side of the square input images.
    n_classes
        Number of logits.
    in_channels
        Channels of the input images.
    dropout
        Dropout probability before the classifier (0 disables it).
    head
        ``"global"`` (global average pool) or ``"flatten"`` (max-pool and flatten; needs
        ``image_size >= 4``).

    Returns
    -------
    torch.nn.Sequential
        Maps ``(n, in_channels, image_size, image_size)`` to ``(n, n_classes)``.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}.")
    if image_size < 2:
        raise ValueError(f"image_size must be >= 2, got {image_size}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if head == "global":
        pool: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)]
        n_features = 2 * width
    elif head == "flatten":
        if image_size < 4:
            raise ValueError(f'head="flatten" needs image_size >= 4, got {image_size}.')
        pool = [nn.MaxPool2d(2)]
        n_features = 2 * width * (image_size // 4) ** 2
    else:
        raise ValueError(f'head must be "global" or "flatten", got {head!r}.')
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        *pool,
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(n_features, n_classes),
    )


def mlp(
    hidden: int = 128,
    *,
    image_size: int = 28,
    n_classes: int = 10,
    in_channels: int = 1,
    depth: int = 2,
    dropout: float = 0.0,
) -> nn.Sequential:
    """A fully connected ReLU network on the flattened image.

    Parameters
    ----------
    hidden
        Width of every hidden layer.
    image_size
        Side of the square input images.
    n_classes
        Number of logits.
    in_channels
        Channels of the input images.
    depth
        Number of hidden layers (0 gives multinomial logistic regression).
    dropout
        Dropout probability after every hidden layer (0 disables it).

    Returns
    -------
    torch.nn.Sequential
        Maps ``(n, in_channels, image_size, image_size)`` to ``(n, n_classes)``.
    """
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}.")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    layers: list[nn.Module] = [nn.Flatten()]
    n_in = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(n_in, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = hidden
    layers.append(nn.Linear(n_in, n_classes))
    return nn.Sequential(*layers)
