"""Many workers, one model (issue 12): the video state kept in step by additive updates.

Workers are simulated in one process (the Kafka side is tested with the service): the stream is
split by viewer with Kafka's partitioner, each worker learns its viewers only, and every
``interval`` events every worker takes its updates and applies everyone else's, exactly what
they would read from the update topic.
"""

from __future__ import annotations

import numpy as np
import pytest
from kafka.partitioner.default import murmur2

from contract.events import WatchEvent
from model.embedding import EmbeddingRanker
from model.evaluate import StreamingEvaluator
from model.replica import (
    SHARED_TABLES,
    STEP_TABLES,
    ReplicatedRanker,
    VideoReplica,
    VideoUpdates,
    dequantize_rows,
    initial_vectors,
    quantize_rows,
)
from tests.streams import SOURCES, stream


def worker_of(viewer: str, workers: int) -> int:
    return (murmur2(viewer.encode()) & 0x7FFFFFFF) % workers


def group_run(
    events, workers: int, interval: int, batch: int = 256, precision: str = "float32"
) -> tuple[float, list[VideoReplica]]:
    """Test-then-train HR@10 of the group (hits over evaluated, summed over workers), and the
    replicas after a last exchange."""
    replicas = [VideoReplica(ReplicatedRanker(), precision) for _ in range(workers)]
    evaluators = [StreamingEvaluator("streamrec", n=10) for _ in range(workers)]
    pending: list[list] = [[] for _ in range(workers)]

    def learn(w: int) -> None:
        evaluators[w].observe(pending[w], replicas[w].model.rank_and_learn(pending[w], 10))
        pending[w] = []

    def exchange() -> None:
        taken = [r.take() for r in replicas]
        for w, r in enumerate(replicas):
            for other, updates in enumerate(taken):
                if other != w:
                    r.apply(VideoUpdates.from_bytes(updates.to_bytes()))  # as read from Kafka

    for i, e in enumerate(events, 1):
        w = worker_of(e.viewer, workers)
        pending[w].append(e)
        if len(pending[w]) == batch:
            learn(w)
        if interval and i % interval == 0:
            exchange()
    for w in range(workers):
        if pending[w]:
            learn(w)
    exchange()
    hits = sum(e.report.hits for e in evaluators)
    return hits / sum(e.report.evaluated for e in evaluators), replicas


@pytest.fixture(scope="module", params=SOURCES)
def source(request) -> tuple[str, list[WatchEvent]]:
    n = 100_000 if request.param == "ml-100k" else 30_000
    return request.param, stream(request.param, n)


def test_the_replicated_model_alone_learns_like_the_default(source):
    """Vectors that start from the video id instead of the random stream change nothing that matters."""
    _, events = source
    alone, _ = group_run(events, 1, 0)
    default = StreamingEvaluator("streamrec", n=10)
    model = EmbeddingRanker()
    for start in range(0, len(events), 256):
        chunk = events[start : start + 256]
        default.observe(chunk, model.rank_and_learn(chunk, 10))
    assert alone == pytest.approx(default.report.hr, abs=0.004)


def test_two_workers_exchanging_updates_learn_as_well_as_one(source):
    """Without the exchange two workers lose quality (each learns the videos from half the
    stream); exchanging every 1,024 events brings the group back within 0.005 of one worker."""
    name, events = source
    one, _ = group_run(events, 1, 0)
    private, _ = group_run(events, 2, 0)
    shared, _ = group_run(events, 2, 1024)
    assert private < one - 0.005, (name, one, private)
    assert shared >= one - 0.005, (name, one, shared)


def test_two_workers_sending_quantised_vectors_learn_as_well_as_with_float32(source):
    """int8 vectors (the coarsest precision) cost the group no quality: within 0.002 of float32."""
    name, events = source
    exact, _ = group_run(events, 2, 1024)
    coarse, _ = group_run(events, 2, 1024, precision="int8")
    assert coarse == pytest.approx(exact, abs=0.002), (name, exact, coarse)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_replicas_agree_on_every_video_after_the_last_exchange(source, precision):
    """Sums in another order differ in the last float32 bits, nothing more: every shared table
    of every video agrees to 1e-4 relative (vectors of norm ~1 and accumulators of ~1e3). With
    quantised vectors too: each sender keeps the rounded step it sends."""
    _, events = source
    _, replicas = group_run(events[:20_000], 3, 2048, precision=precision)
    first, *others = replicas
    ids = sorted(first.model.videos.ids)
    for other in others:
        assert sorted(other.model.videos.ids) == ids
        for name in SHARED_TABLES:
            a = first.model.state_parts()[name].array[first.model.videos.get_many(ids)]
            b = other.model.state_parts()[name].array[other.model.videos.get_many(ids)]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(first.model._alpha, other.model._alpha, rtol=1e-5)


def test_updates_commute_and_survive_the_wire_in_parts():
    events = stream("synthetic", 3000)
    a, b, c = (VideoReplica(ReplicatedRanker()) for _ in range(3))
    a.model.learn_many([e for e in events if worker_of(e.viewer, 2) == 0])
    b.model.learn_many([e for e in events if worker_of(e.viewer, 2) == 1])
    from_a, from_b = a.take(), b.take()
    assert len(from_a) and len(from_b)
    # c gets a's updates whole then b's in records of 20 kB; a fourth the other way round.
    d = VideoReplica(ReplicatedRanker())
    c.apply(from_a)
    records = from_b.records(budget=20_000)
    assert len(records) > 2 and all(len(r) <= 20_000 for r in records)
    for record in records:
        c.apply(VideoUpdates.from_bytes(record))
    for record in reversed(from_b.records(budget=7_000)):
        d.apply(VideoUpdates.from_bytes(record))
    d.apply(from_a)
    ids = sorted(c.model.videos.ids)
    assert sorted(d.model.videos.ids) == ids
    for name in SHARED_TABLES:
        x = c.model.state_parts()[name].array[c.model.videos.get_many(ids)]
        y = d.model.state_parts()[name].array[d.model.videos.get_many(ids)]
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)
    cx, dx = c.model.videos.get_many(ids), d.model.videos.get_many(ids)
    np.testing.assert_allclose(c.model._cooc.array[np.ix_(cx, cx)], d.model._cooc.array[np.ix_(dx, dx)])
    # What was applied is agreed: nothing of it is sent on as c's own.
    assert len(c.take()) == 0


def test_a_replica_restored_from_its_arrays_sends_only_what_came_after(tmp_path):
    events = stream("synthetic", 2000)
    model = ReplicatedRanker()
    replica = VideoReplica(model)
    model.learn_many(events[:1000])
    replica.take()
    saved = replica.to_arrays()
    model.save(tmp_path / "m.npz")
    restored = ReplicatedRanker.load(tmp_path / "m.npz")
    again = VideoReplica(restored)
    again.load_arrays(saved)
    assert len(again.take()) == 0
    restored.learn_many(events[1000:1100])
    assert 0 < len(again.take()) <= len(restored.videos)


def test_quantize_rows_rounds_each_row_to_half_its_scale():
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(50, 32)) * rng.lognormal(0, 4, size=(50, 1))).astype(np.float32)
    values[7] = 0.0
    for kind, top in ((np.int8, 127), (np.int16, 32767)):
        q, scale = quantize_rows(values, kind)
        assert q.dtype == kind and scale.dtype == np.float32 and q.shape == values.shape
        back = dequantize_rows(q, scale)
        ulps = 4 * np.finfo(np.float32).eps * np.abs(values)  # the float32 product's own rounding
        assert np.all(np.abs(back - values) <= scale[:, None] * 0.5 + ulps)
        assert np.all(np.abs(q).max(axis=1)[np.arange(50) != 7] == top)  # each row's peak is exact
        assert scale[7] == 0 and not back[7].any()


@pytest.mark.parametrize("precision", ["int16", "int8"])
def test_a_sender_keeps_exactly_the_rounded_step_a_peer_adds(precision):
    """Quantised updates are smaller on the wire, and the sender's model takes the step as
    rounded, so a peer that applies them holds the very same vectors (no float difference)."""
    events = stream("synthetic", 3000)
    sender, peer = VideoReplica(ReplicatedRanker(), precision), VideoReplica(ReplicatedRanker(), precision)
    exact = VideoReplica(ReplicatedRanker())
    sender.model.learn_many(events)
    exact.model.learn_many(events)
    rounded, whole = sender.take(), exact.take()
    assert rounded.ids == whole.ids and set(rounded.scales) == {
        "video_vectors",
        "transitions",
        "video_vectors_acc",
        "transitions_acc",
    }
    assert len(rounded.to_bytes()) < 0.75 * len(whole.to_bytes())
    record = rounded.to_bytes()
    assert record.startswith(b"streamrec.video-updates/3\n") and whole.to_bytes().startswith(
        b"streamrec.video-updates/2\n"
    )  # a worker that predates quantised records refuses them instead of misreading them
    peer.apply(VideoUpdates.from_bytes(record))
    mine, theirs = sender.model.videos.get_many(rounded.ids), peer.model.videos.get_many(rounded.ids)
    for name in SHARED_TABLES:
        a = sender.model.state_parts()[name].array[mine]
        np.testing.assert_array_equal(a, peer.model.state_parts()[name].array[theirs], err_msg=name)
        # ... and the rounding moved it by at most half a scale from the exact step.
        b = exact.model.state_parts()[name].array[exact.model.videos.get_many(rounded.ids)]
        bound = rounded.scales[name][:, None] * 0.51 + 1e-6 if name in rounded.scales else 1e-6
        assert np.all(np.abs(a - b) <= bound), name
    assert len(sender.take()) == 0  # nothing left to send: what it kept is agreed


def test_garbage_is_not_taken_for_updates():
    with pytest.raises(ValueError, match="not video updates"):
        VideoUpdates.from_bytes(b"not an npz")


# -- take costs what changed: the noted changes against a dense difference ----------------------


def dense_snapshot(model: ReplicatedRanker) -> dict:
    """Everything shared, copied: the plain reference a take is checked against."""
    parts = model.state_parts()
    return {
        "ids": list(model.videos.ids),
        "tables": {name: parts[name].array.copy() for name in SHARED_TABLES},
        "cooc": model._cooc.array.copy(),
        "own": model._cooc.counts.copy(),
    }


def dense_difference(
    model: ReplicatedRanker, before: dict, between: list[list[str]]
) -> tuple[dict, dict, dict]:
    """What the model added since ``before``, by id, by plain differences over every row: per
    table ``{id: delta}`` (rows whose video changed count from the video's start; ``between``:
    the row ids after each batch since, so a video that expired and came back to its row
    counts as changed), co-occurrence ``{(id, id): count}`` over unordered pairs, own counts
    ``{id: count}``; zeros left out."""
    ids, now = model.videos.ids, dense_snapshot(model)
    n = len(ids)
    same = np.array(
        [all(r < len(seen) and seen[r] == ids[r] for seen in [before["ids"], *between]) for r in range(n)],
        dtype=bool,
    )
    tables = {}
    for name in SHARED_TABLES:
        base = np.zeros_like(now["tables"][name])
        base[same] = before["tables"][name][:n][same[: len(before["tables"][name])]]
        if name == "video_vectors":
            fresh = np.flatnonzero(~same)
            base[fresh] = initial_vectors([ids[r] for r in fresh], model.dim, model.init_scale, model.seed)
        delta = now["tables"][name] - base
        tables[name] = {ids[r]: delta[r] for r in range(n) if ids[r] and np.any(delta[r] != 0)}
    size = now["cooc"].shape[0]
    old = np.zeros_like(now["cooc"])
    k = min(size, before["cooc"].shape[0])
    old[:k, :k] = before["cooc"][:k, :k]
    old_own = np.zeros(size, np.float32)
    old_own[:k] = before["own"][:k]
    moved = np.flatnonzero(~same[:size])
    old[moved, :] = old[:, moved] = old_own[moved] = 0
    lo, hi = np.nonzero(np.triu(now["cooc"] - old, 1))
    pairs = {frozenset((ids[a], ids[b])): now["cooc"][a, b] - old[a, b] for a, b in zip(lo, hi, strict=True)}
    own = {ids[r]: now["own"][r] - old_own[r] for r in np.flatnonzero(now["own"] != old_own)}
    return tables, pairs, own


def test_take_sends_what_a_dense_difference_finds_through_expiry_and_reuse():
    """The noted changes (rows written, pairs counted, rows released and reused) give exactly
    what differencing every row and the whole co-occurrence matrix gives, window by window,
    with videos expiring and their rows reused by new ones in between."""
    events = stream("synthetic", 6000)
    # A short shortlist: the batch's columns are not every row, so each kind of row written counts.
    model = ReplicatedRanker(video_ttl=3 * 86400.0, expire_every=100, shortlist=60, shortlist_share=0.0)
    replica = VideoReplica(model)
    for start in range(0, len(events), 300):
        before, between = dense_snapshot(model), []
        for batch in range(start, start + 300, 100):  # rows released and reused within a window
            model.learn_many(events[batch : batch + 100])
            between.append(list(model.videos.ids))
        tables, pairs, own = dense_difference(model, before, between)
        updates = VideoUpdates.from_bytes(replica.take().to_bytes())
        sent = {v: k for k, v in enumerate(updates.ids)}
        for name in SHARED_TABLES:
            assert tables[name].keys() <= sent.keys(), name
            got = {
                v: updates.tables[name][k] for v, k in sent.items() if np.any(updates.tables[name][k] != 0)
            }
            assert got.keys() == tables[name].keys(), name
            for v, delta in tables[name].items():
                np.testing.assert_array_equal(got[v], delta, err_msg=f"{name} {v}")
        i, j, counts = updates.pairs
        got_pairs = {
            frozenset((updates.ids[a], updates.ids[b])): c for a, b, c in zip(i, j, counts, strict=True)
        }
        assert got_pairs == pairs
        got_own = {updates.ids[k]: c for k, c in enumerate(updates.own) if c}
        assert got_own == own
    assert model.expired[1] > 0  # the windows did cross expiry
    assert len(model.videos.free_rows) < model.expired[1]  # and released rows were reused


def test_a_replica_restored_mid_window_sends_what_the_uninterrupted_one_sends(tmp_path):
    """Changes noted but not yet taken are saved with the replica: a worker restored from a
    checkpoint written between two sends sends the same updates as one that never stopped."""
    events = stream("synthetic", 3000)
    model = ReplicatedRanker(video_ttl=3 * 86400.0, expire_every=250)
    replica = VideoReplica(model)
    model.learn_many(events[:1500])
    replica.take()
    model.learn_many(events[1500:2500])  # pending: rows written, pairs counted, rows released
    saved = replica.to_arrays()
    model.save(tmp_path / "m.npz")
    restored = ReplicatedRanker.load(tmp_path / "m.npz")
    again = VideoReplica(restored)
    again.load_arrays(saved)
    for m in (model, restored):
        m.learn_many(events[2500:])
    expected, got = replica.take(), again.take()
    assert got.ids == expected.ids and len(got) > 0
    for name in SHARED_TABLES:
        np.testing.assert_array_equal(got.tables[name], expected.tables[name], err_msg=name)
    for a, b in zip(got.pairs, expected.pairs, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.own, expected.own)


def test_updates_of_the_first_format_are_still_read():
    """Version 1 records (an ``.npz`` with every ordered co-occurrence pair) may wait in an
    update topic: each unordered pair is applied once."""
    import io

    buffer = io.BytesIO()
    np.savez(
        buffer,
        format=np.array("streamrec.video-updates/1"),
        id_bytes=np.frombuffer(b"ab", dtype=np.uint8),
        id_ends=np.array([1, 2]),
        pair_i=np.array([0, 1], np.int32),
        pair_j=np.array([1, 0], np.int32),
        pair_count=np.array([3.0, 3.0], np.float32),
        own=np.array([3.0, 3.0], np.float32),
        alpha=np.zeros(2, np.float32),
        **{"table.watch_counts": np.array([3.0, 3.0])},
    )
    updates = VideoUpdates.from_bytes(buffer.getvalue())
    assert updates.ids == ["a", "b"]
    assert [a.tolist() for a in updates.pairs] == [[0], [1], [3.0]]
    replica = VideoReplica(ReplicatedRanker())
    replica.apply(updates)
    m = replica.model
    a, b = m.videos.get("a"), m.videos.get("b")
    assert m._cooc.array[a, b] == m._cooc.array[b, a] == 3.0


def test_a_worker_weighting_its_steps_keeps_and_sends_that_share_and_the_replicas_agree():
    """With ``step_weight`` 1/3 (the mean over three workers) a send carries a third of the
    worker's steps on vectors and biases, the worker keeps just that share, accumulators and
    counts go whole, and three workers exchanging so end with one state."""
    events = stream("synthetic", 3000)
    share = [[e for e in events if worker_of(e.viewer, 3) == w] for w in range(3)]
    full, third = VideoReplica(ReplicatedRanker()), VideoReplica(ReplicatedRanker())
    for r in (full, third):
        r.model.learn_many(share[0])
    third.step_weight = 1 / 3
    whole, weighted = full.take(), third.take()
    assert whole.ids == weighted.ids and len(whole)
    for name in SHARED_TABLES:
        expected = whole.tables[name] / 3 if name in STEP_TABLES else whole.tables[name]
        np.testing.assert_allclose(weighted.tables[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)
    rows = third.model.videos.get_many(whole.ids)
    kept = third.model._E.array[rows] - full.model._E.array[rows]  # the start plus a third, not all
    np.testing.assert_allclose(kept, -2 / 3 * whole.tables["video_vectors"], rtol=1e-4, atol=1e-6)

    replicas = [VideoReplica(ReplicatedRanker()) for _ in range(3)]
    for r, mine in zip(replicas, share, strict=True):
        r.step_weight = 1 / 3
        r.model.learn_many(mine)
    taken = [r.take() for r in replicas]
    for w, r in enumerate(replicas):
        for other, updates in enumerate(taken):
            if other != w:
                r.apply(VideoUpdates.from_bytes(updates.to_bytes()))
    first, *others = replicas
    ids = sorted(first.model.videos.ids)
    for other in others:
        for name in SHARED_TABLES:
            a = first.model.state_parts()[name].array[first.model.videos.get_many(ids)]
            b = other.model.state_parts()[name].array[other.model.videos.get_many(ids)]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(("precision", "weight"), [("float32", 1.0), ("int8", 0.5)])
def test_discard_takes_back_the_video_learning_since_the_last_take_and_keeps_the_viewers(precision, weight):
    """Events learned again whose learning the replica already holds (applied from the update
    topic) are discarded on the video side: every shared table, the co-occurrence counts and
    the blend weight are as they were at the last take, new videos at their start; the viewers
    keep the watches; nothing is left to send."""
    events = stream("synthetic", 4000)
    first, again = events[:3000], events[3000:]
    replica = VideoReplica(ReplicatedRanker(), precision)
    replica.step_weight = weight
    model = replica.model
    model.learn_many(first)
    replica.take()
    ids = list(model.videos.ids)
    before = {
        name: model.state_parts()[name].array[model.videos.get_many(ids)].copy() for name in SHARED_TABLES
    }
    cooc, alpha = model._cooc.array[: len(ids), : len(ids)].copy(), float(model._alpha[0])
    viewer = again[-1].viewer
    model.learn_many(again)
    new = [v for v in model.videos.ids if v not in set(ids)]
    assert new, "no new video in the events learned again: proves less"
    changed = model._E.array[model.videos.get_many(ids)]
    assert not np.allclose(changed, before["video_vectors"]), "nothing learned: proves nothing"

    replica.discard()
    rows = model.videos.get_many(ids)
    for name in SHARED_TABLES:
        np.testing.assert_allclose(
            model.state_parts()[name].array[rows], before[name], atol=1e-6, err_msg=name
        )
    np.testing.assert_allclose(model._cooc.array[: len(ids), : len(ids)], cooc, atol=1e-6)
    assert float(model._alpha[0]) == pytest.approx(alpha, abs=1e-6)
    start = initial_vectors(new, model.dim, model.init_scale, model.seed or 0)
    np.testing.assert_allclose(model._E.array[model.videos.get_many(new)], start, atol=1e-6)
    assert not model._counts.array[model.videos.get_many(new)].any()
    # The viewer side stays learned: the last event's video is in its viewer's watched list.
    watched = model.seen.of(model.viewers.get(viewer))
    assert model.videos.get(again[-1].video) in watched
    leftover = replica.take()
    for values in leftover.tables.values():
        assert not np.abs(values).max(initial=0) > 1e-6


def test_videos_applied_before_the_first_event_are_not_expired_as_never_seen():
    """A new worker applies its peers' updates before it learns its first event (its clock has
    not started). Those videos are seen when the clock starts: before, they looked idle since
    1970 and its first expiry run released every one of them, with all the group had learned."""
    events = stream("synthetic", 4000)
    peer, late = VideoReplica(ReplicatedRanker()), VideoReplica(ReplicatedRanker(expire_every=100))
    peer.model.learn_many(events[:3000])
    late.apply(peer.take())
    taught = [v for v in peer.model.videos.ids if v]
    counts = peer.model._counts.array[peer.model.videos.get_many(taught)].copy()
    late.model.learn_many(events[3000:])  # the clock starts, then expiry runs every 100 events
    assert late.model._life.since < 100, "no expiry run: proves nothing"
    assert late.model._life.expired_videos == 0
    rows = late.model.videos.get_many(taught)
    assert (rows >= 0).all()
    assert (late.model._counts.array[rows] >= counts).all()


def test_a_replica_whose_catalogue_passes_the_co_occurrence_cap_through_a_peer_saves_a_state_it_can_load(
    tmp_path,
):
    """Past ``cooc_max_videos`` a model drops its co-occurrence counts. A worker whose catalogue
    crossed the cap through its peers' videos, not its own learning, kept counts over fewer rows
    than it had videos: its checkpoint failed to load ("co-occurrence covers 4096 videos, but
    4257 rows exist"), and the worker could not restart. Now the counts go however the
    catalogue grew, and a state of the old kind loads (its counts freed at the next step)."""
    events = stream("synthetic", 4000)
    cap = len({e.video for e in events[:100]}) + 10
    a, b = (VideoReplica(ReplicatedRanker(cooc_max_videos=cap)) for _ in range(2))
    a.model.learn_many(events[:100])
    b.apply(a.take())
    assert 0 < len(b.model.videos) <= cap and b.model._cooc.rows == len(b.model.videos)
    a.model.learn_many(events[100:3000])  # a's catalogue passes the cap
    assert len(a.model.videos) > cap and a.model._cooc.rows == 0
    b.apply(a.take())  # so does b's, by a's videos alone
    assert len(b.model.videos) > cap
    b.model.save(tmp_path / "b.npz")
    restored = ReplicatedRanker.load(tmp_path / "b.npz")  # the old code: "damaged content"
    assert restored.videos.ids == b.model.videos.ids
    assert b.model._cooc.rows == 0  # no counts kept that nothing reads

    # A state saved by the old code: counts over the rows it had when the cap was passed.
    stale = ReplicatedRanker(cooc_max_videos=cap)
    stale.learn_many(events[:100])
    rows = len(stale.videos)
    stale.adopt([f"peer-video-{i}" for i in range(cap)])
    stale._cooc.ensure(rows)  # what the old adopt left: the counts as they were
    stale.save(tmp_path / "stale.npz")
    loaded = ReplicatedRanker.load(tmp_path / "stale.npz")
    loaded.learn_many(events[100:200])
    assert loaded._cooc.rows == 0
