"""Token choice: greedy, seeded sampling, nucleus, and the limits of temperature."""

from __future__ import annotations

import numpy as np
import pytest

from model.sampling import choose, distribution, draw, guided_logits, log_probs

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


def test_top_p_zero_keeps_only_the_most_likely_token():
    rng = np.random.default_rng(3)
    assert {int(choose(LOGITS, 1.0, rng, top_p=0.0)[1]) for _ in range(50)} == {3}


def test_log_probs_of_a_draw_are_those_of_the_tempered_nucleus_distribution():
    logits = LOGITS[:1]
    probs = distribution(logits, 0.5, top_p=0.9)
    by_hand = np.exp(logits[0] / 0.5) / np.exp(logits[0] / 0.5).sum()  # [0.0159, 0.867, 0.117, 0.0003]
    kept = np.where(np.isin(np.arange(4), [1, 2]), by_hand, 0.0)  # 0.867 is short of 0.9: token 2 joins
    np.testing.assert_allclose(probs[0], kept / kept.sum())
    lp = log_probs(logits, probs)[0]
    np.testing.assert_allclose(lp[[1, 2]], np.log(kept[[1, 2]] / kept.sum()))
    assert np.isneginf(lp[[0, 3]]).all()


def test_log_probs_of_a_greedy_choice_are_the_model_softmax():
    lp = log_probs(LOGITS, distribution(LOGITS, 0.0))
    np.testing.assert_allclose(np.exp(lp), np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True))


def test_drawing_from_the_distribution_is_choose():
    a = [choose(LOGITS, 0.8, rng, 0.9).tolist() for rng in [np.random.default_rng(9)] for _ in range(30)]
    rng = np.random.default_rng(9)
    b = [draw(distribution(LOGITS, 0.8, 0.9), rng).tolist() for _ in range(30)]
    assert a == b
