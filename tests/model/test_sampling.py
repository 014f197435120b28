"""Token choice: greedy, seeded sampling, nucleus, and the limits of temperature."""

from __future__ import annotations

import numpy as np
import pytest

from model.sampling import choose, guided_logits

LOGITS = np.array([[1.0, 3.0, 2.0, -1.0], [0.5, 0.1, 0.2, 4.0]])


def test_temperature_zero_is_argmax():
    assert choose(LOGITS, 0.0, np.random.default_rng(0)).tolist() == [1, 3]


@pytest.mark.parametrize("temperature", [1e-310, 5e-324, 1e-300])
def test_a_vanishing_temperature_chooses_like_greedy(temperature):
    assert choose(LOGITS * 50, temperature, np.random.default_rng(0)).tolist() == [1, 3]


def test_same_seed_same_draws_and_draws_follow_the_distribution():
    a = [choose(LOGITS, 1.0, rng).tolist() for rng in [np.random.default_rng(5)] * 1 for _ in range(20)]
    b = [choose(LOGITS, 1.0, rng).tolist() for rng in [np.random.default_rng(5)] * 1 for _ in range(20)]
    assert a == b
    rng = np.random.default_rng(1)
    draws = np.array([choose(LOGITS[:1], 1.0, rng)[0] for _ in range(4000)])
    probs = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()
    assert np.abs(np.bincount(draws, minlength=4) / 4000 - probs).max() < 0.03


def test_nucleus_never_picks_outside_the_top_mass():
    rng = np.random.default_rng(2)
    draws = {int(choose(LOGITS[:1], 1.0, rng, top_p=0.6)[0]) for _ in range(500)}
    assert draws == {1}  # token 1 alone holds 0.66 of the mass


def test_guidance_weight_one_returns_the_conditional_logits():
    cond, uncond = LOGITS[0], LOGITS[1]
    assert guided_logits(cond, uncond, 1.0) is cond
    np.testing.assert_allclose(guided_logits(cond, uncond, 3.0), uncond + 3 * (cond - uncond))
