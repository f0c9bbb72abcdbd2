"""The contract every registered model keeps, checked on each one (implicit's shared suite).

Parametrised over :func:`model.registry.names`, so a model registered tomorrow gets the whole
suite for free, the default model included. Each test is behaviour a user of the model (the
evaluator, the service, a river user) would notice; the state of two models is compared
through the parts they save (:meth:`~model.base.StreamRanker.state_parts`), so "the same state"
means "the same saved file".
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from contract.events import WatchEvent
from model.base import StreamRanker
from model.evaluate import evaluate
from model.persist import FORMAT, settings_of_instance
from model.registry import create, model_class, names, settings_of
from model.topk import UNRANKED

MODELS = names()

#: Models whose learning step is one gradient step per *batch*: for them a batch of one is one
#: ``learn_one``, and larger batches learn the same preferences but not the same numbers. Every
#: other model (a new one too, unless it says so here) learns event by event, so any split of a
#: stream into batches must end in the same state.
BATCH_LEARNERS = {"streamrec", "streamrec_profile"}


def clustered_stream(viewers: int = 60, clusters: int = 4, per_cluster: int = 12, seed: int = 0):
    """Each viewer watches videos of one cluster, in random order; clusters equally popular.

    Popularity carries no signal here, co-occurrence carries all of it. Timestamps are the
    event's position, in seconds.
    """
    rng = np.random.default_rng(seed)
    events = []
    queues = {}
    for v in range(viewers):
        c = v % clusters
        queues[f"u{v}"] = [f"c{c}v{i}" for i in rng.permutation(per_cluster)[: per_cluster // 2 + 2]]
    t = 0
    while any(queues.values()):
        for viewer, queue in queues.items():
            if queue and rng.random() < 0.5:
                events.append(WatchEvent(float(t), viewer, queue.pop()))
                t += 1
    return events


@pytest.fixture(scope="module")
def stream():
    return clustered_stream()


def state_of(model: StreamRanker) -> dict[str, np.ndarray]:
    """Every array the model would save, by name (copies)."""
    return {
        f"{prefix}/{key}": np.array(array, copy=True)
        for prefix, part in model.state_parts().items()
        for key, array in part.to_arrays().items()
    }


def assert_same_state(a: StreamRanker, b: StreamRanker, rtol: float = 0.0, but: str | None = None) -> None:
    """``a`` and ``b`` would save the same arrays (floats to ``rtol`` when given; all but the
    part named ``but``) and report the same stats."""
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    for key, array in sa.items():
        if but is not None and key.startswith(f"{but}/"):
            continue
        if rtol and array.dtype.kind == "f":
            np.testing.assert_allclose(sb[key], array, rtol=rtol, atol=1e-12, err_msg=key)
        elif rtol and key.startswith("counters/"):  # named scalars, as JSON
            assert json.loads(str(sb[key])) == pytest.approx(json.loads(str(array)), rel=rtol), key
        else:
            np.testing.assert_array_equal(sb[key], array, err_msg=key)
    stats_a, stats_b = a.stats(), b.stats()
    if rtol:
        assert stats_a._replace(loss_sum=0.0) == stats_b._replace(loss_sum=0.0)
        assert stats_b.loss_sum == pytest.approx(stats_a.loss_sum, rel=rtol)
    else:
        assert stats_a == stats_b


def assert_same_lists(a: StreamRanker, b: StreamRanker, viewers: list[str], n: int = 10) -> None:
    for ra, rb in zip(a.recommend_many(viewers, n), b.recommend_many(viewers, n), strict=True):
        assert ra.videos == rb.videos
        np.testing.assert_array_equal(ra.scores, rb.scores)


def learn_in_batches(model: StreamRanker, events: list[WatchEvent], size: int) -> StreamRanker:
    for start in range(0, len(events), size):
        model.learn_many(events[start : start + size])
    return model


def watched_by(events: list[WatchEvent]) -> dict[str, set[str]]:
    watched: dict[str, set[str]] = {}
    for e in events:
        watched.setdefault(e.viewer, set()).add(e.video)
    return watched


# -- recommending --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_recommendations_exclude_watched_videos_and_fill_n(name, stream):
    model = create(name)
    model.learn_many(stream)
    watched = watched_by(stream)
    catalogue = {e.video for e in stream}
    for viewer in ("u0", "u1", "u7"):
        rec = model.recommend(viewer, n=10)
        assert len(rec.videos) == min(10, len(catalogue - watched[viewer]))
        assert not set(rec.videos) & watched[viewer]
        assert len(set(rec.videos)) == len(rec.videos)
        assert np.all(np.diff(rec.scores) <= 0)
    # Asked for more than can be shown: every video not watched, and no more.
    assert sorted(model.recommend("u0", n=100).videos) == sorted(catalogue - watched["u0"])
    # Without exclusion, watched videos may come back, and the list is full.
    assert len(model.recommend("u0", n=10, exclude_seen=False).videos) == 10


@pytest.mark.parametrize("name", MODELS)
def test_every_model_says_what_each_viewer_watched(name, stream):
    """What the service leaves out of another model's lists for a viewer of an arm that failed."""
    model = create(name)
    model.learn_many(stream)
    said = model.watched(["u0", "u7", "nobody"])
    assert set(said) == {"u0", "u7"}
    assert {v: set(videos) for v, videos in said.items()} == {v: watched_by(stream)[v] for v in ("u0", "u7")}


@pytest.mark.parametrize("name", MODELS)
def test_an_unknown_viewer_gets_a_full_list_and_no_query_creates_state(name, stream):
    model = create(name)
    model.learn_many(stream)
    before, stats = state_of(model), model.stats()
    assert len(model.recommend("somebody-new", n=5).videos) == 5
    model.recommend_many(["somebody-new", "u0", "another-new"], n=7)
    model.predict_one("somebody-new", "c0v1")
    model.predict_one("u0", "never-seen-video")
    model.rank("somebody-new", {"c0v1", "c1v1", "unknown-video"})
    model.score_videos("yet-another", ["c0v1", "unknown-video"])
    model.rank_events([WatchEvent(1e6, "another-new", "c0v1"), WatchEvent(1e6, "u0", "brand-new")])
    assert model.stats() == stats
    after = state_of(model)
    assert after.keys() == before.keys()
    for key, array in before.items():
        np.testing.assert_array_equal(after[key], array, err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_a_fresh_model_recommends_nothing_ranks_nothing_and_predicts_minus_inf(name):
    """Asked before it learned anything (a river user might), a model answers, empty-handed."""
    model = create(name)
    assert model.recommend("anyone").videos == []
    assert model.recommend_many(["a", "b"], n=3)[1].videos == []
    ranking = model.rank_events([WatchEvent(0.0, "a", "x")])
    assert (ranking.top == -1).all() and ranking.rank.tolist() == [UNRANKED] and ranking.catalogue == 0
    assert model.predict_one("a", "x") == -math.inf
    assert model.rank("a", {"x", "y"}) in (["x", "y"], ["y", "x"])
    assert model.stats()[:3] == (0, 0, 0)
    assert model.clock is None
    counts = model.video_counts()
    assert counts is None or len(counts) == 0


# -- the test step: causal ranking ---------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_ranking_a_batch_uses_the_state_before_it(name, stream):
    model = create(name)
    model.learn_many(stream[:-40])
    before = state_of(model)
    # Distinct viewers ranked together or one at a time: the same lists and ranks.
    batch, seen_viewers = [], set()
    for e in stream[-40:]:
        if e.viewer not in seen_viewers:
            seen_viewers.add(e.viewer)
            batch.append(e)
    together = model.rank_events(batch, n=10)
    for k, e in enumerate(batch):
        alone = model.rank_events([e], n=10)
        assert alone.rank[0] == together.rank[k]
        assert alone.top[0].tolist() == together.top[k].tolist()
    # Later events of a batch never change what earlier ones were shown.
    batch = stream[-40:]
    whole = model.rank_events(batch, n=10)
    for k in (0, 5, 17, 39):
        prefix = model.rank_events(batch[: k + 1], n=10)
        assert prefix.rank[k] == whole.rank[k]
        assert prefix.top[k].tolist() == whole.top[k].tolist()
    # A video first seen inside the batch is unknown to the state before it: it cannot rank.
    fresh = model.rank_events([WatchEvent(1e6, "u0", "premiere"), WatchEvent(1e6, "u1", "premiere")])
    assert fresh.rank.tolist() == [UNRANKED, UNRANKED]
    # And ranking learns nothing.
    after = state_of(model)
    for key, array in before.items():
        np.testing.assert_array_equal(after[key], array, err_msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_rank_and_learn_is_rank_events_then_learn_many(name, stream):
    together, apart = create(name), create(name)
    for start in range(0, len(stream), 32):
        batch = stream[start : start + 32]
        a = together.rank_and_learn(batch, n=10)
        b = apart.rank_events(batch, n=10)
        apart.learn_many(batch)
        np.testing.assert_array_equal(a.top, b.top)
        np.testing.assert_array_equal(a.rank, b.rank)
        assert a.catalogue == b.catalogue
    assert_same_state(together, apart)


# -- the train step --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_learn_one_is_learn_many_of_one_event(name, stream):
    by_one, by_many = create(name), create(name)
    for e in stream[:300]:
        by_one.learn_one(e.viewer, e.video, True, {"timestamp": e.timestamp})
        by_many.learn_many([e])
    assert_same_state(by_one, by_many)


@pytest.mark.parametrize("name", [n for n in MODELS if n not in BATCH_LEARNERS])
def test_an_event_by_event_model_learns_the_same_in_any_batches(name, stream):
    single = learn_in_batches(create(name), stream, 1)
    for size in (37, len(stream)):
        batched = learn_in_batches(create(name), stream, size)
        # Equal up to rounding (decayed weights summed per batch instead of per event). Models
        # that expire ids stamp a batch's ids with one clock and expire at the end of a batch
        # (model.lifecycle): that bookkeeping follows the batches, what was learned does not.
        assert_same_state(batched, single, rtol=1e-6, but="lifecycle")
        for viewer in ("u0", "u5", "nobody"):
            assert batched.recommend(viewer, n=5).videos == single.recommend(viewer, n=5).videos


@pytest.mark.parametrize("name", MODELS)
def test_river_protocol(name, stream):
    model = create(name)
    for e in stream[:200]:
        model.learn_one(e.viewer, e.video)
    viewer = stream[0].viewer
    assert math.isfinite(model.predict_one(viewer, stream[1].video))
    assert model.predict_one(viewer, "never-seen-video") == -math.inf
    items = {e.video for e in stream[:50]}
    ranked = model.rank(viewer, items)
    assert sorted(ranked) == sorted(items)
    scores = [model.predict_one(viewer, i) for i in ranked]
    assert scores == sorted(scores, reverse=True)
    # A false y is not a watch: nothing is learned.
    before = model.stats()
    model.learn_one("zero", "c0v0", y=0)
    assert model.stats() == before


@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_in_the_evaluator(name, stream):
    report = evaluate(create(name), stream, batch_size=16)
    assert report.evaluated > 0
    assert 0.0 <= report.hr <= 1.0 and 0.0 <= report.ndcg <= report.hr


# -- what the service reads ------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_stats_count_the_events_learned_and_the_viewers_and_videos_held(name, stream):
    model = create(name)
    learn_in_batches(model, stream[:250], 50)
    stats = model.stats()
    assert stats.events_learned == 250
    assert stats.viewers == len({e.viewer for e in stream[:250]})
    assert stats.videos == len({e.video for e in stream[:250]})
    assert stats.memory_bytes > 0 and math.isfinite(stats.loss_sum) and stats.guard_trips >= 0
    model.learn_many(stream[250:])
    assert model.stats().events_learned == len(stream) and model.stats().viewers == 60


@pytest.mark.parametrize("name", MODELS)
def test_video_counts_are_the_watches_of_each_video_row(name, stream):
    model = create(name)
    learn_in_batches(model, stream, 64)
    counts = model.video_counts()
    if counts is None:
        return
    watches: dict[str, int] = {}
    for e in stream:
        watches[e.video] = watches.get(e.video, 0) + 1
    assert len(counts) == len(model.videos)
    assert {v: counts[model.videos.get(v)] for v in watches} == pytest.approx(watches)


@pytest.mark.parametrize("name", MODELS)
def test_the_clock_follows_event_time_or_is_none(name, stream):
    model = create(name)
    start = 1_700_000_000.0  # seconds since the epoch, as the service sees them
    events = [e._replace(timestamp=start + e.timestamp) for e in stream]
    clocks = []
    for i in range(0, len(events), 40):
        model.learn_many(events[i : i + 40])
        clocks.append(model.clock)
    if all(c is None for c in clocks):
        return
    assert None not in clocks, "a clock, once started, keeps time"
    assert clocks == sorted(clocks), "the clock never goes back"
    assert start <= clocks[0] and clocks[-1] <= events[-1].timestamp
    assert clocks[-1] >= events[-100].timestamp  # it keeps up with the stream


# -- saving and loading ----------------------------------------------------------------------------


def expiring(name: str) -> dict:
    """Settings that make ids expire within the test stream, for the models that expire ids."""
    known = settings_of(name)
    wanted = {"viewer_ttl": 60.0, "video_ttl": 120.0, "expire_every": 7}
    return {k: v for k, v in wanted.items() if k in known}


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_continue_exactly_as_if_never_saved(name, stream, tmp_path):
    first, rest = stream[: len(stream) // 2], stream[len(stream) // 2 :]
    # Newcomers after the save: new rows, new random vectors, drawn from the restored generator.
    rest = rest + [WatchEvent(float(len(stream) + t), f"late{t % 5}", f"new{t % 3}") for t in range(30)]
    model = learn_in_batches(create(name, **expiring(name)), first, 16)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = model_class(name).load(path)
    assert type(loaded) is type(model)
    viewers = sorted({e.viewer for e in stream}) + ["stranger"]
    assert_same_lists(model, loaded, viewers)
    assert_same_state(model, loaded)
    assert loaded.clock == model.clock
    for m in (model, loaded):
        learn_in_batches(m, rest, 16)
    assert_same_state(model, loaded)
    assert_same_lists(model, loaded, viewers + ["late0", "late4"])
    np.testing.assert_array_equal(model.rank_events(rest[-20:]).top, loaded.rank_events(rest[-20:]).top)


@pytest.mark.parametrize("name", MODELS)
def test_a_saved_file_is_one_npz_without_pickle(name, stream, tmp_path):
    model = create(name)
    model.learn_many(stream)
    path = tmp_path / "checkpoint.bin"
    model.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.bin"]
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)
        assert str(data["format"]) == FORMAT and str(data["model"]) == name


def changed_settings(name: str) -> dict:
    """For each setting of the model that a simple change of value applies to, a changed value
    the model accepts (alongside the others already changed)."""
    changed: dict = {}
    for key, default in settings_of(name).items():
        if isinstance(default, bool):
            value = not default
        elif isinstance(default, int):
            value = default + 1
        elif isinstance(default, float):
            value = default / 2 if default else 0.5
        else:  # None, text: no change guessed from the default alone
            continue
        try:
            create(name, **changed, **{key: value})
        except ValueError:
            continue
        changed[key] = value
    return changed


@pytest.mark.parametrize("name", MODELS)
def test_every_setting_is_kept_under_its_own_name_and_survives_save_and_load(name, stream, tmp_path):
    assert settings_of_instance(create(name)) == settings_of(name)
    changed = changed_settings(name)
    assert changed, "a model with settings has some that can change"
    model = create(name, **changed)
    assert settings_of_instance(model) == settings_of(name) | changed
    model.learn_many(stream[:100])
    model.save(tmp_path / "m.npz")
    assert settings_of_instance(model_class(name).load(tmp_path / "m.npz")) == settings_of_instance(model)


def _rewrite(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _cut_video_rows(model: StreamRanker):
    """Drop the last video from the saved video index: the tables have a row more than ids."""
    prefixes = [p for p, part in model.state_parts().items() if part is model.videos]
    assert len(prefixes) == 1, "the video index is one part"

    def change(arrays: dict) -> None:
        for key in [k for k in arrays if k.startswith(f"{prefixes[0]}/")]:
            if arrays[key].ndim >= 1 and len(arrays[key]):
                arrays[key] = arrays[key][:-1]

    return change


def _drop_a_part_array(model: StreamRanker):
    def change(arrays: dict) -> None:
        del arrays[next(k for k in arrays if "/" in k)]

    return change


DAMAGES = {
    "foreign": ("format None", None),
    "other_model": ("holds model", None),
    "truncated": ("cannot read it as .npz", None),
    "garbage": ("cannot read it as .npz", None),
    "empty": ("cannot read it as .npz", None),
    "older_format": ("written by an older streamrec", None),
    "older_state": ("state version", None),
    "missing_array": ("damaged content", _drop_a_part_array),
    "video_rows_disagree": ("damaged content", _cut_video_rows),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", MODELS)
def test_load_refuses_what_this_model_did_not_write_naming_the_file(name, damage, stream, tmp_path):
    model = create(name)
    model.learn_many(stream)
    path = tmp_path / "model.npz"
    model.save(path)
    reason, change = DAMAGES[damage]
    if damage == "foreign":
        with open(path, "wb") as f:
            np.savez(f, weights=np.ones(3))
    elif damage == "other_model":
        other = MODELS[(MODELS.index(name) + 1) % len(MODELS)]
        create(other).save(path)
        reason = f"holds model '{other}'"
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a model at all\n" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "older_format":
        _rewrite(path, lambda a: a.update(format=np.array("streamrec.model/2")))
    elif damage == "older_state":
        _rewrite(path, lambda a: a.update(state_version=a["state_version"] - 1))
    else:
        _rewrite(path, change(model))
    assert zipfile.is_zipfile(path) or damage in ("truncated", "garbage", "empty")
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        model_class(name).load(path)
    assert f"is not a file of the streamrec model {name!r}" in str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize("name", MODELS)
def test_loading_a_missing_file_is_file_not_found(name, tmp_path):
    with pytest.raises(FileNotFoundError):
        model_class(name).load(tmp_path / "nothing.npz")
