"""The synthetic stream: seeded, valid on the wire, and carrying the structure it promises."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import numpy as np
import pytest

from contract.schema import event_from_json, event_to_json
from producer.synth import SyntheticStream


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return SyntheticStream(viewers=500, videos=3000, events=30_000, seed=3)


@pytest.fixture(scope="module")
def events(stream: SyntheticStream) -> list:
    return list(stream)


def test_same_seed_same_stream_and_other_seed_another(events):
    again = list(itertools.islice(SyntheticStream(viewers=500, videos=3000, events=30_000, seed=3), 5000))
    other = list(itertools.islice(SyntheticStream(viewers=500, videos=3000, events=30_000, seed=4), 200))
    assert again == events[:5000]
    assert [e.video for e in other] != [e.video for e in events[:200]]


def test_exact_length_time_order_and_valid_wire_events(stream, events):
    assert len(events) == len(stream) == 30_000
    assert all(a.timestamp <= b.timestamp for a, b in zip(events, events[1:], strict=False))
    assert events[0].timestamp == stream.start
    # Every event survives the consumer's validation unchanged.
    assert all(event_from_json(event_to_json(e)) == e for e in events[:2000])
    assert all(0 <= e.watch_time <= e.duration for e in events)


def test_viewers_watch_within_their_tastes(stream, events):
    """Most of a viewer's watches fall in the three topics its taste favours most."""
    viewer_row = {v: i for i, v in enumerate(stream.viewer_ids)}
    video_row = {v: i for i, v in enumerate(stream.video_ids)}
    top3 = np.argsort(-stream.taste, axis=1)[:, :3]
    inside = np.mean([stream.video_topic[video_row[e.video]] in top3[viewer_row[e.viewer]] for e in events])
    chance = 3 / stream.clusters
    assert inside > 0.45 > 3 * chance


def test_watch_fraction_is_higher_on_taste(stream, events):
    viewer_row = {v: i for i, v in enumerate(stream.viewer_ids)}
    video_row = {v: i for i, v in enumerate(stream.video_ids)}
    favourite = stream.taste.argmax(axis=1)
    on, off = [], []
    for e in events:
        match = stream.video_topic[video_row[e.video]] == favourite[viewer_row[e.viewer]]
        (on if match else off).append(e.watch_time / e.duration)
    assert np.mean(on) > np.mean(off) + 0.25


def test_popularity_is_heavy_tailed(events):
    counts = np.array(sorted(Counter(e.video for e in events).values(), reverse=True))
    top_share = counts[: len(counts) // 20].sum() / counts.sum()
    assert top_share > 0.2  # the top 5% of videos get over four times their share of watches


def test_viewers_and_videos_arrive_during_the_stream(stream, events):
    first_seen: dict[str, int] = {}
    for i, e in enumerate(events):
        first_seen.setdefault(e.video, i)
        first_seen.setdefault(e.viewer, i)
    video_row = {v: i for i, v in enumerate(stream.video_ids)}
    viewer_row = {v: i for i, v in enumerate(stream.viewer_ids)}
    # Nothing is watched before it exists, and nobody watches before joining...
    for video, i in first_seen.items():
        if video in video_row:
            assert i / len(events) >= stream.video_arrival[video_row[video]]
        else:
            assert i / len(events) >= stream.viewer_arrival[viewer_row[video]]
    # ...and the second half of the stream brings viewers and videos the first half never saw.
    half = len(events) // 2
    early = {e.viewer for e in events[:half]} | {e.video for e in events[:half]}
    late_newcomers = {e.viewer for e in events[half:]} - early
    late_videos = {e.video for e in events[half:]} - early
    assert len(late_newcomers) > 10 and len(late_videos) > 50


def test_sessions_stay_on_topic(stream, events):
    """Back-to-back watches share their topic more often than a viewer's watches a day apart."""
    video_row = {v: i for i, v in enumerate(stream.video_ids)}
    history: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for e in events:
        history[e.viewer].append(
            (e.timestamp, e.timestamp + e.watch_time, stream.video_topic[video_row[e.video]])
        )
    in_session, days_apart = [], []
    for watches in history.values():
        for (_, end, topic), (start, _, next_topic) in zip(watches, watches[1:], strict=False):
            if start - end < 600:  # the next video started within minutes: same session
                in_session.append(topic == next_topic)
        for (t, _, topic), (u, _, other) in zip(watches, watches[5:], strict=False):
            if u - t > 86400:
                days_apart.append(topic == other)
    assert len(in_session) > 1000 and len(days_apart) > 1000
    assert np.mean(in_session) > np.mean(days_apart) + 0.15


def test_tastes_drift_toward_each_viewers_drift_topic(stream, events):
    viewer_row = {v: i for i, v in enumerate(stream.viewer_ids)}
    video_row = {v: i for i, v in enumerate(stream.video_ids)}
    halves = [defaultdict(list), defaultdict(list)]
    for i, e in enumerate(events):
        v = viewer_row[e.viewer]
        halves[2 * i // len(events)][v].append(
            stream.video_topic[video_row[e.video]] == stream.drift_topic[v]
        )
    both = [v for v in halves[0] if len(halves[0][v]) >= 10 and len(halves[1].get(v, [])) >= 10]
    first = np.mean([np.mean(halves[0][v]) for v in both])
    second = np.mean([np.mean(halves[1][v]) for v in both])
    assert len(both) > 50
    assert second > first + 0.05


def test_rejects_impossible_parameters():
    with pytest.raises(ValueError, match="popular_share"):
        SyntheticStream(popular_share=1.5)
    with pytest.raises(ValueError, match="viewers"):
        SyntheticStream(viewers=0)


@pytest.mark.slow
def test_a_learning_model_beats_popularity_on_it():
    """The point of the stream: what a viewer watched says what they watch next."""
    from model.baselines import CoOccurrenceKNN, MostPopular
    from model.evaluate import evaluate

    events = list(SyntheticStream(viewers=300, videos=1000, events=15_000, seed=1))
    popular = evaluate(MostPopular(), events, batch_size=50)
    learned = evaluate(CoOccurrenceKNN(), events, batch_size=50)
    assert popular.evaluated > 10_000
    assert learned.hr > 1.5 * popular.hr


def test_written_to_a_file_it_is_the_same_stream_for_the_evaluator(tmp_path, capsys):
    from producer.readers import read_events
    from streamrec.cli import main

    path = tmp_path / "synth.jsonl"
    args = ["produce", "synth", "--viewers", "20", "--videos", "40", "--events", "300", "--seed", "2"]
    assert main([*args, "--output", str(path)]) == 0
    assert "wrote 300 events" in capsys.readouterr().out
    assert read_events(path) == list(SyntheticStream(viewers=20, videos=40, events=300, seed=2))
