"""Arms and the always-valid readout (consumer.experiment), checked as a user would rely on them."""

from __future__ import annotations

import numpy as np
import pytest

from consumer.experiment import Assignment, Counts, compare, rate_interval

VIEWERS = [f"viewer-{i}" for i in range(20_000)]


def shares(assignment: Assignment) -> dict[str, float]:
    arms = [assignment.arm_of(v) for v in VIEWERS]
    return {name: arms.count(name) / len(arms) for name in assignment.weights}


def test_a_viewer_keeps_their_arm_across_restarts_and_workers():
    first = Assignment({"control": 1, "treatment": 1}, salt="exp")
    again = Assignment({"treatment": 1, "control": 1}, salt="exp")  # another worker, another order
    assert [first.arm_of(v) for v in VIEWERS[:2000]] == [again.arm_of(v) for v in VIEWERS[:2000]]


def test_another_salt_is_another_experiment():
    one = Assignment({"a": 1, "b": 1}, salt="exp-1")
    two = Assignment({"a": 1, "b": 1}, salt="exp-2")
    same = sum(one.arm_of(v) == two.arm_of(v) for v in VIEWERS) / len(VIEWERS)
    assert 0.47 < same < 0.53  # independent draws agree half the time


@pytest.mark.parametrize("weights", [{"a": 1, "b": 1}, {"a": 9, "b": 1}, {"a": 1, "b": 2, "c": 1}])
def test_weights_are_respected_within_sampling_error(weights):
    got = shares(Assignment(weights, salt="w"))
    total = sum(weights.values())
    for name, weight in weights.items():
        expected = weight / total
        sigma = (expected * (1 - expected) / len(VIEWERS)) ** 0.5
        assert abs(got[name] - expected) < 4 * sigma, (name, got[name], expected)


def test_changing_a_weight_moves_only_the_viewers_it_must():
    before = Assignment({"control": 1, "treatment": 1}, salt="m")
    after = Assignment({"control": 1, "treatment": 1.5}, salt="m")  # 50% -> 60% treatment
    moved = [(before.arm_of(v), after.arm_of(v)) for v in VIEWERS]
    changed = [pair for pair in moved if pair[0] != pair[1]]
    assert all(pair == ("control", "treatment") for pair in changed)  # nobody leaves treatment
    assert abs(len(changed) / len(VIEWERS) - 0.10) < 0.015  # the 10 points that had to move


def test_weights_must_be_positive():
    with pytest.raises(ValueError, match="positive weight"):
        Assignment({"a": 1, "b": 0})


def look_after_every_batch(rate_a: float, rate_b: float, seed: int, batches: int = 200, size: int = 250):
    """Simulated arms, looked at after every batch: the first batch a verdict at 0.05 came, or None."""
    rng = np.random.default_rng(seed)
    a = b = Counts(0, 0)
    for batch in range(batches):
        a = Counts(a.shown + size, a.hits + int(rng.binomial(size, rate_a)))
        b = Counts(b.shown + size, b.hits + int(rng.binomial(size, rate_b)))
        if compare(a, b).p_value < 0.05:
            return batch
    return None


def test_an_a_a_experiment_watched_after_every_batch_rarely_declares_a_difference():
    verdicts = sum(look_after_every_batch(0.12, 0.12, seed) is not None for seed in range(20))
    assert verdicts <= 2  # at most 10% of 20 seeds


def test_a_fixed_horizon_z_test_peeked_at_every_batch_would_not_be_valid():
    # Why the readout is sequential: the naive test declares A/A differences far more often.
    def z_test_verdict(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        a = b = 0
        for batch in range(1, 201):
            a += int(rng.binomial(250, 0.12))
            b += int(rng.binomial(250, 0.12))
            n = 250 * batch
            p = (a + b) / (2 * n)
            z = (b - a) / n / (2 * p * (1 - p) / n) ** 0.5
            if abs(z) > 1.96:
                return True
        return False

    assert sum(z_test_verdict(seed) for seed in range(40)) >= 8  # > 20%: peeking breaks it


def test_a_planted_winner_is_declared_with_p_below_0_01():
    rng = np.random.default_rng(3)
    a = b = Counts(0, 0)
    for _ in range(400):
        a = Counts(a.shown + 250, a.hits + int(rng.binomial(250, 0.12)))
        b = Counts(b.shown + 250, b.hits + int(rng.binomial(250, 0.16)))
        readout = compare(a, b)
        if readout.p_value < 0.01:
            break
    assert readout.p_value < 0.01 and readout.low > 0 and readout.difference > 0


def test_intervals_cover_the_truth_and_shrink_with_events():
    small = rate_interval(Counts(1_000, 120))
    large = rate_interval(Counts(100_000, 12_000))
    assert small.low < 0.12 < small.high and large.low < 0.12 < large.high
    assert large.high - large.low < (small.high - small.low) / 5
