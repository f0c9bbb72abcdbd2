"""Behaviour of the main model (model.embedding.EmbeddingRanker) that a user would notice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract.events import WatchEvent
from model.embedding import EmbeddingRanker, _running_sums
from model.evaluate import evaluate
from model.topk import UNRANKED

ROOT = Path(__file__).resolve().parents[1]


def _groups_stream(rounds: int = 30, seed: int = 0) -> list[WatchEvent]:
    """Two disjoint taste groups: viewers g0-* watch videos a0..a4, viewers g1-* watch b0..b4."""
    rng = np.random.default_rng(seed)
    events = []
    for t in range(rounds * 10):
        group = int(rng.integers(2))
        viewer = f"g{group}-{int(rng.integers(6))}"
        video = ("a", "b")[group] + str(int(rng.integers(5)))
        events.append(WatchEvent(float(t), viewer, video))
    return events


def _trained(events: list[WatchEvent], batch: int = 1, cls=EmbeddingRanker, **kwargs) -> EmbeddingRanker:  # noqa: ANN001
    model = cls(seed=3, **kwargs)
    for start in range(0, len(events), batch):
        model.learn_many(events[start : start + batch])
    return model


def _state(model: EmbeddingRanker) -> dict[str, np.ndarray]:
    """Everything learned: every per-video table (a subclass's own included), histories, alpha."""
    return {name: table.array.copy() for name, table in model._video_tables().items()} | {
        "history": model._recent.items.array.copy(),
        "alpha": model._alpha.copy(),
        "shortlist steering": np.array([model.shortlist_share_now, model.shortlist_lost_rate]),
    }


def test_known_answer_disjoint_groups() -> None:
    model = _trained(_groups_stream())
    # A new viewer who watched one video of a group is shown that group's videos only.
    model.learn_one("newcomer", "a2")
    assert all(v.startswith("a") for v in model.recommend("newcomer", n=4).videos)
    model.learn_one("other", "b0")
    assert all(v.startswith("b") for v in model.recommend("other", n=4).videos)


def test_watched_videos_are_excluded_and_n_valid_items_return() -> None:
    model = _trained(_groups_stream())
    watched = {e.video for e in _groups_stream() if e.viewer == "g0-1"}
    rec = model.recommend("g0-1", n=10)
    assert not watched & set(rec.videos)
    assert len(rec.videos) == 10 - len(watched)  # everything else, nothing invalid
    assert np.isfinite(rec.scores).all()
    assert watched <= set(model.recommend("g0-1", n=10, exclude_seen=False).videos)


def test_unknown_viewer_gets_trending_then_related_after_one_watch() -> None:
    events = [WatchEvent(t, f"u{t}", "old") for t in range(20)]
    events += [WatchEvent(20 + t, f"w{t}", "new") for t in range(10)]
    events += [WatchEvent(40 + t, f"x{t % 5}", v) for t, v in enumerate(["p", "q"] * 10)]
    model = _trained(events, trending_half_life=5.0)
    # "new" is watched less than "old" but more recently: trending ranks it first.
    top = model.recommend("stranger", n=4).videos
    assert top.index("new") < top.index("old")
    model.learn_one("stranger", "p")
    assert model.recommend("stranger", n=1).videos == ["q"]


def test_predictions_create_no_state() -> None:
    model = _trained(_groups_stream())
    before = (model.n_viewers, model.n_videos, model.events_learned, len(model.seen))
    snapshot = _state(model)
    model.recommend_many(["ghost", "g0-1"], n=5)
    model.score_videos("ghost", ["a1", "nope"])
    model.predict_one("ghost", "nope")
    model.rank("ghost", {"a1", "b1", "zzz"})
    model.rank_events([WatchEvent(0.0, "ghost", "zzz"), WatchEvent(1.0, "ghost", "a1")])
    assert (model.n_viewers, model.n_videos, model.events_learned, len(model.seen)) == before
    for key, array in _state(model).items():
        np.testing.assert_array_equal(array, snapshot[key], err_msg=key)
    assert model.score_videos("ghost", ["nope"])[0] == -np.inf


def test_batch_of_one_is_learn_one() -> None:
    events = _groups_stream(rounds=10)
    by_batches = _trained(events, batch=1)
    by_one = EmbeddingRanker(seed=3)
    for e in events:
        by_one.learn_one(e.viewer, e.video, True, {"timestamp": e.timestamp})
    for key, array in _state(by_one).items():
        np.testing.assert_array_equal(array, _state(by_batches)[key], err_msg=key)


def _rank_and_learn_agrees(
    events: list[WatchEvent],
    batch: int,
    cls=EmbeddingRanker,
    **settings,  # noqa: ANN001
) -> EmbeddingRanker:
    """rank_and_learn (one score matrix for both steps) ranks and learns exactly as
    rank_events then learn_many, and as learning alone; the model that ranked and learned."""
    together, apart = cls(seed=3, **settings), cls(seed=3, **settings)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        a = together.rank_and_learn(chunk, n=5)
        b = apart.rank_events(chunk, n=5)
        apart.learn_many(chunk)
        np.testing.assert_array_equal(a.top, b.top)
        np.testing.assert_array_equal(a.rank, b.rank)
    alone = _trained(events, batch=batch, cls=cls, **settings)
    for key, array in _state(together).items():
        np.testing.assert_array_equal(_state(apart)[key], array, err_msg=key)
        np.testing.assert_array_equal(_state(alone)[key], array, err_msg=key)
    assert together.stats() == apart.stats() == alone.stats()
    return together


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_rank_and_learn_is_rank_events_then_learn_many(batch: int) -> None:
    _rank_and_learn_agrees(_groups_stream(rounds=20), batch)


def test_rank_and_learn_with_events_held_back_by_the_admission_filter() -> None:
    # Held-back events change the batch learned: it is prepared again, with the same result.
    events = _groups_stream(rounds=20)
    events += [WatchEvent(300.0 + t, f"once{t}", f"rare{t % 7}") for t in range(40)]
    _rank_and_learn_agrees(events, 16, min_events=2)


def test_batch_ranking_is_causal_inside_the_batch() -> None:
    pairs = [("p", "q"), ("r", "s")]
    events = [WatchEvent(float(t), f"x{t}", video) for t in range(40) for video in pairs[t % 2]]
    model = _trained(events)
    # A viewer unknown before the batch: their first event in it already forms their history,
    # and what they watched earlier in the batch is excluded from later events' lists.
    batch = [
        WatchEvent(100.0, "fresh", "p"),
        WatchEvent(101.0, "fresh", "q"),
        WatchEvent(102.0, "fresh", "r"),
    ]
    ranking = model.rank_events(batch, n=3)
    p, q = model.videos.get("p"), model.videos.get("q")
    assert ranking.rank[1] == 0 and ranking.top[1][0] == q  # after p comes q
    assert p not in ranking.top[1]
    assert p not in ranking.top[2] and q not in ranking.top[2]
    assert model.n_viewers == 40  # ranking created nothing


def test_larger_batches_learn_the_same_preferences() -> None:
    for batch in (1, 16, 128):
        model = _trained(_groups_stream(rounds=60), batch=batch)
        model.learn_one("probe", "b3")
        assert all(v.startswith("b") for v in model.recommend("probe", n=3).videos), batch


def test_save_load_round_trip_continues_identically(tmp_path: Path) -> None:
    events = _groups_stream(rounds=20)
    # Videos new after the save draw their vectors from the saved random state.
    events += [WatchEvent(200.0 + t, f"g{t % 2}-{t % 6}", f"new{t % 4}") for t in range(30)]
    model = _trained(events[:150])
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = EmbeddingRanker.load(path)
    assert (loaded.n_viewers, loaded.n_videos, loaded.events_learned) == (
        model.n_viewers,
        model.n_videos,
        model.events_learned,
    )
    viewers = ["g0-1", "g1-2", "stranger"]
    for a, b in zip(model.recommend_many(viewers), loaded.recommend_many(viewers), strict=True):
        assert a.videos == b.videos
        np.testing.assert_array_equal(a.scores, b.scores)
    for m in (model, loaded):
        for start in range(150, len(events), 10):
            m.learn_many(events[start : start + 10])
    for key, array in _state(model).items():
        np.testing.assert_array_equal(array, _state(loaded)[key], err_msg=key)
    assert loaded.events_learned == len(events) and loaded.stats() == model.stats()


def test_save_writes_exactly_the_given_name(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.bin"
    _trained(_groups_stream(rounds=2)).save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.bin"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign_npz", "empty", "bad_shape"])
def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "model.npz"
    _trained(_groups_stream(rounds=5)).save(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a model at all\n" * 10)
    elif damage == "foreign_npz":
        with open(path, "wb") as f:
            np.savez(f, weights=np.ones(3))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["video_vectors/rows"] = arrays["video_vectors/rows"][:1]
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with pytest.raises(ValueError, match=f"{path} is not a file of the streamrec model 'streamrec'"):
        EmbeddingRanker.load(path)


@pytest.mark.parametrize("older", ["streamrec.embedding/1", "streamrec.embedding/2"])
def test_a_file_of_an_older_release_is_refused_saying_so(tmp_path: Path, older: str) -> None:
    path = tmp_path / "model.npz"
    with open(path, "wb") as f:  # what model/state.py wrote (abridged)
        np.savez(f, format=np.array(older), config=np.array(json.dumps({"dim": 32})))
    with pytest.raises(ValueError, match=f"written by an older streamrec \\({older}\\)"):
        EmbeddingRanker.load(path)


@pytest.mark.parametrize(
    "key, change, reason",
    [
        ("history/items", lambda a: a + 1000, "history name video row"),
        ("seen/videos", lambda a: a + 1000, "seen lists name video row"),
        ("transitions/rows", lambda a: a[:-1], "transitions has"),
        ("feature_weights/alpha", lambda a: a * np.nan, "alpha holds non-finite"),
        ("counters/values", lambda a: np.array('{"events_learned": 1.5}'), "counters must be exactly"),
        ("random/state", lambda a: np.array('{"bit_generator": "MT19937"}'), "not a PCG64 state"),
        ("lifecycle/video_last_seen", lambda a: np.r_[a, 0.0], "last-seen times"),
    ],
)
def test_a_file_whose_parts_disagree_is_refused_with_the_reason(tmp_path: Path, key, change, reason) -> None:
    path = tmp_path / "model.npz"
    _trained(_groups_stream(rounds=5), viewer_ttl=1e6, video_ttl=1e6).save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = change(arrays[key])
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=f"damaged content .*{reason}"):
        EmbeddingRanker.load(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EmbeddingRanker.load(tmp_path / "nothing.npz")


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_guard_never_writes_non_finite_numbers() -> None:
    # Absurd settings make scores overflow float32; the update must skip, not write NaN.
    model = EmbeddingRanker(seed=0, lr=1e19, init_scale=1e19, max_grad_norm=1e38)
    events = _groups_stream(rounds=10)
    report = evaluate(model, events, batch_size=8)
    assert model.guard_trips > 0
    for key, array in _state(model).items():
        assert np.isfinite(array).all(), key
    assert 0.0 <= report.hr <= 1.0
    rec = model.recommend("g0-1", n=3)
    assert len(rec.videos) == len(set(rec.videos))


def test_river_protocol() -> None:
    from river.checks.reco import check_reco_routine

    model = EmbeddingRanker(seed=0)
    check_reco_routine(model)  # river's own routine: rank, learn_one with bool rewards
    before = model.events_learned
    model.learn_one("ann", "politics", False)  # no watch: implicit feedback ignores it
    model.learn_one("ann", "politics", True)
    model.learn_one("ann", "sports", 120.0, {"duration": 600.0, "timestamp": 5.0})
    assert model.events_learned == before + 2
    assert isinstance(model.predict_one("ann", "politics"), float)
    assert model.predict_one("ann", "never-seen") == -np.inf
    ranked = model.rank("ann", {"politics", "sports", "never-seen"})
    assert sorted(ranked) == ["never-seen", "politics", "sports"] and ranked[-1] == "never-seen"


def test_memory_is_reported_per_viewer_and_per_video() -> None:
    model = _trained(_groups_stream(rounds=5))
    memory = model.memory_bytes()
    assert memory["per_viewer"] > 4 * model.dim and memory["per_video"] > 4 * model.dim
    assert memory["total"] >= memory["per_video"] * model.n_videos


def test_importing_model_loads_no_kafka_or_prometheus() -> None:
    code = (
        "import sys, model, model.embedding;"
        "bad = [m for m in sys.modules"
        " if m.split('.')[0] in ('kafka', 'prometheus_client', 'confluent_kafka')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cooccurrence_counts_are_dropped_past_their_cap() -> None:
    events = _groups_stream(rounds=10)
    capped = _trained(events, cooc_max_videos=6)  # 10 videos arrive: past the cap
    assert capped._cooc.rows == 0 and capped._cooc.nbytes() == 0
    capped.learn_one("newcomer", "b1")
    assert all(v.startswith("b") for v in capped.recommend("newcomer", n=3).videos)
    assert _trained(events)._cooc.rows == 10


def _catalogue_stream(
    videos: int = 60, events: int = 3000, viewers: int = 200, seed: int = 0
) -> list[WatchEvent]:
    """A synthetic stream: taste topics, Zipf-like popularity, sessions (:mod:`producer.synth`)."""
    from producer.synth import SyntheticStream

    return list(SyntheticStream(viewers=viewers, videos=videos, events=events, seed=seed))


def _hottest(model: EmbeddingRanker, k: int) -> set[str]:
    heat = model._trending()
    return {model.videos.id_of(int(r)) for r in np.argsort(-heat, kind="stable")[:k]}


def _watched(model: EmbeddingRanker, viewer: str) -> set[str]:
    row = model.viewers.get(viewer)
    return set() if row is None else {model.videos.id_of(v) for v in model.seen.of(row)}


def test_shortlist_bounds_what_is_ranked_and_recommended() -> None:
    events = _catalogue_stream()
    model = _trained(events[:2000], batch=64, shortlist=12, shortlist_share=0.0, shortlist_budget=None)
    assert model.n_videos > 12
    hot = _hottest(model, 12)
    batch = events[2000:2064]
    ranking = model.rank_events(batch, n=5)
    ranked = {model.videos.id_of(int(r)) for r in ranking.top.ravel() if r >= 0}
    assert ranked <= hot
    for event, rank in zip(batch, ranking.rank.tolist(), strict=True):
        if model.videos.get(event.video) is not None and event.video not in hot:
            assert rank == UNRANKED  # outside the shortlist: cannot be a hit
    # Published lists come from the same shortlist (unless the viewer watched nearly all of it).
    viewers = sorted({e.viewer for e in batch if len(hot - _watched(model, e.viewer)) >= 5})
    assert viewers
    for rec in model.recommend_many(viewers, n=5):
        assert len(rec.videos) == 5 and set(rec.videos) <= hot


def test_shortlist_falls_back_to_the_catalogue_for_a_viewer_who_watched_it() -> None:
    events = _catalogue_stream()
    model = _trained(events, batch=64, shortlist=8, shortlist_share=0.0, shortlist_budget=None)
    for video in _hottest(model, 8):
        model.learn_one("binger", video)
    rec = model.recommend("binger", n=5)
    assert len(rec.videos) == 5 and not set(rec.videos) & _hottest(model, 8)


def test_videos_outside_the_shortlist_still_learn_and_can_rise_into_it() -> None:
    events = _catalogue_stream()
    exactly_10 = {"shortlist": 10, "shortlist_share": 0.0, "shortlist_budget": None}
    model = _trained(events, batch=64, trending_half_life=200.0, **exactly_10)
    cold = next(v for v in model.videos.ids if v not in _hottest(model, 10))
    before = model._E.array[model.videos.get(cold)].copy()
    t = events[-1].timestamp
    burst = [WatchEvent(t + i, f"fan{i % 7}", cold) for i in range(60)]
    for start in range(0, len(burst), 16):
        model.learn_many(burst[start : start + 16])
    assert not np.array_equal(model._E.array[model.videos.get(cold)], before)
    assert cold in _hottest(model, 10)
    assert cold in model.recommend("stranger", n=3).videos


@pytest.mark.parametrize("shortlist", [None, 15])
def test_shortlist_rank_and_learn_is_rank_events_then_learn_many(shortlist: int | None) -> None:
    _rank_and_learn_agrees(_catalogue_stream(events=1500), 50, shortlist=shortlist, shortlist_share=0.0)


@pytest.mark.parametrize("shortlist", [None, 15])
def test_rank_and_learn_agrees_while_rows_expire_and_are_reused(shortlist: int | None) -> None:
    # With a shortlist, rank_and_learn ranks and learns in one pass per row, creating the new
    # videos' rows first: released rows reused by new videos must rank and learn alike.
    events = _catalogue_stream(events=1500)
    span = events[-1].timestamp - events[0].timestamp
    settings = {"viewer_ttl": span / 8, "video_ttl": span / 8, "expire_every": 50}
    _rank_and_learn_agrees(events, 50, shortlist=shortlist, shortlist_share=0.0, **settings)
    model = _trained(events, batch=50, shortlist=shortlist, shortlist_share=0.0, **settings)
    assert model.expired[1] > 0 and len(model.videos) < len({e.video for e in events})  # rows reused


def test_shortlist_keeps_quality_and_narrows_coverage_on_a_larger_catalogue() -> None:
    # A shortlist of a quarter of 2,000 videos: the hits come from the popular quarter anyway.
    events = _catalogue_stream(videos=2000, events=20000, viewers=1000, seed=2)
    whole = evaluate(EmbeddingRanker(seed=1, shortlist=None), events, batch_size=128)
    exactly_500 = {"shortlist": 500, "shortlist_share": 0.0, "shortlist_budget": None}
    short = evaluate(EmbeddingRanker(seed=1, **exactly_500), events, batch_size=128)
    assert short.hr >= 0.95 * whole.hr > 0.1
    assert short.coverage < whole.coverage


def test_shortlist_grows_to_hold_most_recent_watches_when_popularity_is_flat() -> None:
    # 400 videos, 200 viewers: watches spread over many videos. Exactly the 50 hottest would
    # cost a third of the hits; 50 grown to hold 95% of recent watches costs almost nothing.
    events = _catalogue_stream(videos=400, events=8000, seed=2)
    whole = evaluate(EmbeddingRanker(seed=1, shortlist=None), events, batch_size=128)
    exactly_50 = {"shortlist": 50, "shortlist_share": 0.0, "shortlist_budget": None}
    fixed = evaluate(EmbeddingRanker(seed=1, **exactly_50), events, batch_size=128)
    grown = evaluate(EmbeddingRanker(seed=1, shortlist=50, shortlist_budget=None), events, batch_size=128)
    assert fixed.hr < 0.8 * whole.hr
    assert grown.hr >= 0.95 * whole.hr


def test_the_share_is_found_from_the_top_of_the_order_as_from_the_whole_of_it() -> None:
    """The shortlist's length comes from running sums of the hottest values, sorted: summed
    from only as many as it takes, they give the length and the threshold the whole sorted
    vector gives, ties and released rows (-1) included, whatever depth the search starts at."""
    rng = np.random.default_rng(0)
    for trial in range(500):
        n = int(rng.integers(1, 2000))
        heat = rng.pareto(rng.uniform(0.5, 3.0), n)
        if trial % 2:
            heat = np.round(heat, 1)  # many ties
        heat[rng.random(n) < 0.1] = -1.0
        target = rng.uniform(0.3, 1.0) * heat[heat > 0].sum()
        whole = np.cumsum(np.sort(heat)[::-1])
        sums, descending = _running_sums(heat, target, int(rng.integers(1, n + 2)))
        assert np.array_equal(sums, whole[: sums.size])
        k = int(np.searchsorted(whole, target))
        assert int(np.searchsorted(sums, target)) == k
        if k < n:
            assert descending[k] == np.sort(heat)[::-1][k]


def test_shortlist_is_saved(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    _trained(_groups_stream(rounds=5), shortlist=7).save(path)
    assert EmbeddingRanker.load(path).shortlist == 7
    _trained(_groups_stream(rounds=5), shortlist=None).save(path)
    assert EmbeddingRanker.load(path).shortlist is None


# -- the steered shortlist (shortlist_budget) ------------------------------------------------------


def _flat_taste_stream(groups: int = 40, per_group: int = 25, events: int = 20_000) -> list[WatchEvent]:
    """Every video equally popular: 40 taste groups of 25 videos, 10 viewers each, a viewer
    watching the videos of their group at random. A shortlist of the hottest half misses half
    the watches, and the model would rank most of them in the top 10."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(events):
        group = int(rng.integers(groups))
        viewer, video = f"v{group}-{int(rng.integers(10))}", f"x{group}-{int(rng.integers(per_group))}"
        out.append(WatchEvent(float(t), viewer, video))
    return out


def test_a_steered_shortlist_grows_when_popularity_is_flat() -> None:
    events, half = _flat_taste_stream(), {"shortlist": 50, "shortlist_share": 0.5}
    whole = evaluate(EmbeddingRanker(seed=3, shortlist=None), events, batch_size=64)
    fixed = evaluate(EmbeddingRanker(seed=3, shortlist_budget=None, **half), events, batch_size=64)
    model = EmbeddingRanker(seed=3, **half)  # steered, from the same start
    steered = evaluate(model, events, batch_size=64)
    assert fixed.hr < 0.5 * whole.hr  # the hottest half loses most hits
    assert model.shortlist_share_now > 0.95
    assert steered.hr >= 0.9 * whole.hr


def test_a_steered_shortlist_shortens_on_a_skewed_catalogue_without_losing_hits() -> None:
    events = _catalogue_stream(videos=10_000, events=60_000, viewers=5000, seed=0)  # skewed, as the demo
    fixed_model, steered_model = EmbeddingRanker(seed=1, shortlist_budget=None), EmbeddingRanker(seed=1)
    fixed = evaluate(fixed_model, events, batch_size=256)
    steered = evaluate(steered_model, events, batch_size=256)
    assert steered_model.shortlist_share_now < 0.93 < fixed_model.shortlist_share_now
    n_videos = len(steered_model.videos)  # the same ids, learned alike
    assert steered_model._shortlist(n_videos).size < 0.85 * fixed_model._shortlist(n_videos).size
    assert steered.hr >= fixed.hr - 0.002
    assert steered_model.shortlist_lost_rate <= 2 * steered_model.shortlist_budget


def test_re_watches_do_not_count_as_hits_the_shortlist_lost() -> None:
    """A third of the events re-watch a viewer's own favourite (a show, a song on repeat),
    outside a shortlist of 40 popular videos. Those videos are excluded from the viewer's lists
    whatever the shortlist, so they are no hits it could lose: the share stays where a stream
    of new watches leaves it, instead of climbing to the whole catalogue."""
    rng = np.random.default_rng(0)
    events = []
    for t in range(15_000):
        viewer = int(rng.integers(200))
        video = f"fav{viewer}" if rng.random() < 0.3 else f"pop{int(rng.integers(40))}"
        events.append(WatchEvent(float(t), f"u{viewer}", video))
    model = EmbeddingRanker(seed=0, shortlist=40, shortlist_share=0.5)
    model.learn_many(events[:128])
    for start in range(128, len(events), 128):
        model.learn_many(events[start : start + 128])
    assert model.shortlist_share_now < 0.6
    assert model.shortlist_lost_rate <= model.shortlist_budget
    assert model._shortlist(len(model.videos)).size < 60  # of 240 videos


def test_rank_and_learn_agrees_while_the_shortlist_is_steered() -> None:
    """Learning judges and steers the shortlist in every path alike (ranking alone never does)."""
    events = _flat_taste_stream(events=3000)
    model = _rank_and_learn_agrees(events, 64, shortlist=50, shortlist_share=0.5)
    assert model.shortlist_share_now > 0.6  # it moved


@pytest.mark.parametrize("budget", [0.0, 1.0, -0.1, float("nan")])
def test_a_shortlist_budget_outside_0_1_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="shortlist_budget"):
        EmbeddingRanker(shortlist_budget=budget)
