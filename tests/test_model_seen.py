"""SeenVideos' own bookkeeping (the model's exclusions and memory figure read it)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.seen import SeenVideos


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "many", "clear", "discard"]), st.integers(0, 2**32 - 1)),
        max_size=25,
    )
)
def test_seen_lists_count_their_entries_as_they_change(steps):
    """SeenVideos.entries() is a running count (the service reads it after every poll): it is
    the lists' total length after any mix of the calls that change them."""
    seen = SeenVideos()
    for step, seed in steps:
        rng = np.random.default_rng(seed)
        if step == "add":
            seen.add(int(rng.integers(0, 8)), int(rng.integers(0, 20)))
        elif step == "many":
            size = int(rng.integers(0, 12))
            seen.add_many(rng.integers(0, 8, size), rng.integers(0, 20, size))
        elif step == "clear":
            seen.clear_rows(rng.integers(-1, 10, 3).tolist())
        else:
            seen.discard_videos(rng.integers(0, 20, 3))
        assert seen.entries() == sum(len(seen.of(v)) for v in range(len(seen)))
    back = SeenVideos()
    back.load_arrays(seen.to_arrays())
    assert back.entries() == seen.entries()
