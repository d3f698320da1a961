"""The IS switch: the finite-B variance ratio, the fidelity and speed rules, timings."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from optuna_isbo.issgd.switch import (
    FIDELITY_VARIANCE_RATIO,
    PROBE_STEPS,
    WARMUP_STEPS,
    ISSwitch,
    fixed_cost_ratio,
    tau_threshold_for,
    variance_ratio,
    variance_reduction,
)

N_FEATURES, N_CLASSES = 5, 3


def _skewed(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-sample gradients G (n, P) of a linear model and scores s with ||G_i|| = sqrt(2) s_i.

    For unit-norm inputs the gradient of sample i's cross-entropy w.r.t. (W, bias) is
    delta_i (x_i, 1), of norm sqrt(2) ||delta_i||, and the score is ||delta_i||.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=generator)
    x = x / x.norm(dim=1, keepdim=True)
    weight = 10.0 * torch.randn(N_CLASSES, N_FEATURES, generator=generator)
    predicted = (x @ weight.T).argmax(1)
    y = predicted.clone()
    flipped = torch.rand(n, generator=generator) < 0.1
    y[flipped] = (predicted[flipped] + 1) % N_CLASSES
    delta = torch.softmax(x @ weight.T, dim=1) - F.one_hot(y, N_CLASSES).float()
    grads = torch.cat([(delta[:, :, None] * x[:, None, :]).flatten(1), delta], dim=1)
    return grads.double(), delta.norm(dim=1).double()


def _two_stage_variance(
    grads: Tensor, scores: Tensor, b: int, big_b: int, n_draws: int, seed: int
) -> tuple[float, float]:
    """Monte Carlo E||g - mean G||^2 of an IS step (uniform super-batch, b by score), its SE."""
    generator = torch.Generator().manual_seed(seed)
    target = grads.mean(0)
    n = len(grads)
    super_batches = torch.randint(n, (n_draws, big_b), generator=generator)
    s = scores[super_batches]  # (D, B)
    positions = torch.multinomial(s, b, replacement=True, generator=generator)  # (D, b)
    chosen = super_batches.gather(1, positions)
    weights = s.sum(1, keepdim=True) / (big_b * s.gather(1, positions))  # (D, b)
    estimates = (weights[:, :, None] * grads[chosen]).mean(1)
    errors = ((estimates - target) ** 2).sum(1)
    return float(errors.mean()), float(errors.std() / math.sqrt(n_draws))


def test_variance_ratio_at_finite_super_batch_matches_monte_carlo() -> None:
    grads, scores = _skewed(300, seed=0)
    m1, m2 = float(grads.norm(dim=1).mean()), float((grads**2).sum(1).mean())
    mean_sq = float((grads.mean(0) ** 2).sum())
    sigma2 = m2 - mean_sq
    tau = variance_reduction(scores.float())
    assert tau > 1.5  # skewed enough for the ratios to differ clearly
    b = 4
    for big_b, n_draws in ((4, 40_000), (16, 40_000), (128, 20_000)):
        measured, se = _two_stage_variance(grads, scores, b, big_b, n_draws, seed=big_b)
        # exact for scores proportional to gradient norms (derived in optuna_isbo.issgd.switch)
        exact = sigma2 / big_b + (1 - 1 / big_b) * (m1**2 - mean_sq) / b
        assert abs(measured - exact) < 5 * se, (big_b, measured, exact, se)
        uniform = sigma2 / b
        # variance_ratio neglects |mean G|^2 next to E||G||^2; here that term moves it by
        # at most mean_sq / (m1^2 - mean_sq) relatively (and makes it conservative).
        slack = mean_sq / (m1**2 - mean_sq)
        assert slack < 0.05
        assert variance_ratio(tau, b, big_b) == pytest.approx(uniform / exact, rel=2 * slack)
    # At B = b importance sampling adds variance: it must never be switched on there.
    assert variance_ratio(tau, b, b) < 1


def test_tau_threshold_inverts_the_variance_ratio_and_falls_with_b() -> None:
    b = 32
    thresholds = [tau_threshold_for(1.2, b, big_b) for big_b in (32, 38, 39, 64, 512, 8000)]
    assert thresholds[:2] == [math.inf, math.inf]  # B <= 1.2 b: IS cannot reach a ratio 1.2
    finite = thresholds[2:]
    assert all(t1 > t2 for t1, t2 in zip(finite, finite[1:], strict=False))
    assert finite[-1] == pytest.approx(math.sqrt(1.2), rel=0.01)
    for big_b in (39, 64, 512, 8000):
        tau = tau_threshold_for(1.2, b, big_b)
        assert variance_ratio(tau, b, big_b) == pytest.approx(1.2)
    # The case: tau = 1.5 at b = 32 switches IS on from B = 128, whatever B beyond.
    assert all(1.5 > tau_threshold_for(1.2, b, big_b) for big_b in (128, 512, 8000))


def _feed(switch: ISSwitch, tau_new_scores: Tensor, n: int) -> None:
    for _ in range(n):
        switch.update(tau_new_scores)


# scores with RMS / mean = 2 exactly: one of four samples carries all the score
TAU_TWO = torch.tensor([1.0, 0.0, 0.0, 0.0] * 8)


def test_fidelity_rule_warms_up_then_turns_on_for_every_large_enough_b() -> None:
    assert variance_reduction(TAU_TWO) == pytest.approx(2.0)
    for big_b in (16, 64, 4096):
        switch = ISSwitch(batch_size=8, super_batch_size=big_b)
        assert switch.mode == "fidelity"
        _feed(switch, TAU_TWO, WARMUP_STEPS - 1)
        assert switch.tau > switch.tau_threshold  # large already, but still warming up
        assert switch.next_is_importance() is False and switch.rule == "warmup"
        _feed(switch, TAU_TWO, 1)
        assert switch.next_is_importance() is True and switch.rule == "fidelity"
        assert switch.tau_threshold == tau_threshold_for(FIDELITY_VARIANCE_RATIO, 8, big_b)
    # B = b is uniform SGD whatever tau is
    switch = ISSwitch(batch_size=8, super_batch_size=8)
    _feed(switch, TAU_TWO, 50)
    assert switch.next_is_importance() is False and switch.rule == "uniform"
    assert switch.stats["variance_ratio"] == 1.0 and switch.tau_threshold == math.inf


def test_equal_scores_never_turn_fidelity_on() -> None:
    switch = ISSwitch(batch_size=8, super_batch_size=4096, warmup_steps=0)
    _feed(switch, torch.ones(32), 200)
    assert switch.tau == pytest.approx(1.0)
    assert switch.next_is_importance() is False and switch.rule == "fidelity"


def test_unusable_scores_do_not_move_tau() -> None:
    switch = ISSwitch(batch_size=8, super_batch_size=64)
    switch.update(TAU_TWO)
    tau = switch.tau
    for bad in (torch.zeros(4), torch.tensor([1.0, float("nan")]), torch.tensor([1.0, -1.0])):
        switch.update(bad)
    assert switch.tau == tau and switch.n_updates == 1


def test_speed_rule_uses_the_fixed_model_then_the_measured_prices() -> None:
    b, big_b = 8, 64
    switch = ISSwitch(batch_size=b, super_batch_size=big_b, switch="speed", warmup_steps=2)
    _feed(switch, TAU_TWO, 40)  # tau -> 2, r_B = 64 * 4 / (64 + 32 - 1) = 2.69
    assert switch.cost_ratio == fixed_cost_ratio(b, big_b) == pytest.approx(11 / 3)
    # The fixed model says no (2.69 < 3.67), but the variance reduction is real: probe.
    for _ in range(PROBE_STEPS):
        assert switch.next_is_importance() is True and switch.rule == "probe"
    assert switch.next_is_importance() is False and switch.rule == "fixed-cost"
    # Prices: a uniform step 10 ms; an IS step 10 ms of training plus 64 * 0.05 ms of scoring.
    for importance in (False, False, False, True, True):
        scoring = 64 * 0.05e-3 if importance else 0.0
        switch.record_step(importance, 10e-3 + scoring, scoring)
    assert switch.measured_cost_ratio == pytest.approx(1.32)
    assert switch.next_is_importance() is True and switch.rule == "measured-cost"
    assert switch.stats["uniform_step_seconds"] == pytest.approx(10e-3)
    assert switch.stats["scoring_seconds_per_sample"] == pytest.approx(0.05e-3)
    # Scoring 20 times dearer per sample: a 7.4x dearer step no longer pays for r_B = 2.69.
    for _ in range(200):
        switch.record_step(True, 10e-3 + 64 * 1e-3, 64 * 1e-3)
    assert switch.cost_ratio > variance_ratio(switch.tau, b, big_b)
    assert switch.next_is_importance() is False and switch.rule == "measured-cost"


def test_first_step_of_each_kind_is_not_timed() -> None:
    switch = ISSwitch(batch_size=4, super_batch_size=16, switch="speed")
    switch.record_step(False, 5.0, 0.0)  # e.g. DataLoader workers starting
    switch.record_step(True, 9.0, 8.0)
    assert switch.measured_cost_ratio is None
    switch.record_step(False, 0.01, 0.0)
    switch.record_step(True, 0.02, 0.005)
    assert switch.measured_cost_ratio == pytest.approx(2.0)


def test_explicit_threshold_overrides_either_rule_without_warm_up() -> None:
    modes: tuple[Literal["fidelity", "speed"], ...] = ("fidelity", "speed")
    for mode in modes:
        switch = ISSwitch(batch_size=8, super_batch_size=16, switch=mode, tau_threshold=0.1)
        assert switch.next_is_importance() is False  # tau starts at 0
        switch.update(TAU_TWO)
        assert switch.next_is_importance() is True and switch.rule == "threshold"
        assert switch.mode == "threshold" and switch.tau_threshold == 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"switch": "fast"}, "switch must be 'fidelity' or 'speed'"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer"),
        ({"tau_threshold": math.inf}, "tau_threshold must be finite"),
        ({"momentum": -0.1}, "momentum must be in"),
    ],
)
def test_bad_switch_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ISSwitch(batch_size=4, super_batch_size=8, **kwargs)  # type: ignore[arg-type]


def test_tau_from_device_scores_is_folded_in_order() -> None:
    # update() keeps 0-d tensors until tau is read; the result is the plain EMA in order.
    switch = ISSwitch(batch_size=4, super_batch_size=8, momentum=0.5)
    values = [torch.tensor([1.0, 1.0]), TAU_TWO, torch.tensor([3.0, 1.0])]
    expected = 0.0
    for scores in values:
        switch.update(scores)
        expected = 0.5 * expected + 0.5 * variance_reduction(scores)
    assert switch.tau == pytest.approx(expected)
