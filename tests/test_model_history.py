"""Exact-causal batch histories (model.history) agree with replaying the events one by one."""

import numpy as np
import pytest

from model.history import RecentHistory
from model.weighting import watch_weights


@pytest.mark.parametrize("seed", range(5))
def test_batch_histories_equal_one_event_at_a_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    length, viewers = 4, 5
    batched, single = RecentHistory(length), RecentHistory(length)
    for _batch in range(4):
        rows = rng.integers(0, viewers, 30)
        videos = rng.integers(0, 50, 30)
        weights = rng.random(30).astype(np.float32)
        for h in (batched, single):
            h.ensure(viewers)
        items, hist_w, *final = batched.for_batch(rows, videos, weights)
        for i in range(30):  # the same events, a batch of one each
            one_items, one_w, *one_final = single.for_batch(
                rows[i : i + 1], videos[i : i + 1], weights[i : i + 1]
            )
            np.testing.assert_array_equal(items[i], one_items[0])
            np.testing.assert_array_equal(hist_w[i], one_w[0])
            single.store(*one_final)
        batched.store(*final)
        np.testing.assert_array_equal(batched.items.array, single.items.array)


def test_watch_weights_are_bounded_and_monotone() -> None:
    watched = np.linspace(0, 5000, 50).tolist()
    by_time = watch_weights(watched, [None] * 50)
    by_fraction = watch_weights(watched, [600.0] * 50)
    for w in (by_time, by_fraction):
        assert (w >= 0.1).all() and (w <= 1.0).all() and (np.diff(w) >= 0).all()
    assert by_fraction[-1] == 1.0  # watched to the end
    assert watch_weights([None], [None])[0] == 1.0  # a rating: a plain positive


def test_a_batch_whose_watch_times_and_durations_are_all_known_weighs_each_watch_as_any_batch() -> None:
    # That batch takes a shorter path (the synthetic stream's, and YouTube's logs' usual case);
    # the same watches beside one of unknown length get the same weights, bit for bit.
    rng = np.random.default_rng(4)
    watched = rng.choice([0.0, -3.0, 1e-9, 45.0, 5000.0], 200).tolist() + rng.uniform(0, 900, 300).tolist()
    lengths = rng.choice([1e-3, 60.0, 1200.0], 200).tolist() + rng.uniform(1, 900, 300).tolist()
    known = watch_weights(watched, lengths)
    mixed = watch_weights([*watched, 30.0], [*lengths, None])
    np.testing.assert_array_equal(known, mixed[:-1])
    assert known.dtype == np.float32 and (known >= 0.1).all() and (known <= 1.0).all()
