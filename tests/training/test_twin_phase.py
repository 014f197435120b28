"""When the joint stage gives its drawing pictures guidance twins (training option `twins_from`)."""

from __future__ import annotations

from training.pipeline import Options, twin_phase


def test_twins_start_at_their_share_of_the_joint_stage():
    options = Options(lm_steps=300, guidance_twins=0.25, twins_from=2 / 3)
    shares = [twin_phase(options, step) for step in range(options.lm_steps)]
    assert shares[:200] == [0.0] * 200
    assert shares[200:] == [0.25] * 100


def test_twins_from_the_first_step_when_no_share_is_given():
    options = Options(lm_steps=50, guidance_twins=0.5)
    assert {twin_phase(options, step) for step in range(options.lm_steps)} == {0.5}


def test_the_default_training_has_no_twins():
    options = Options()
    assert {twin_phase(options, step) for step in range(options.lm_steps)} == {0.0}
