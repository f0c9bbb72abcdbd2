"""Live A/B arms (issue 13): which viewers each arm serves, what the lists say, what the metrics
count, what survives a restart, what happens when an arm's model fails, and whether the readout
tells a real difference from none on streams whose answer is known.

The service tests run the real service in a thread against the real broker; the readout tests
replay the seeded synthetic stream through real models, as the service would show their lists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from consumer.arms import parse_arms
from consumer.config import ConfigError, ServiceConfig
from consumer.experiment import Assignment, Counts, compare
from consumer.metrics import ServiceMetrics
from consumer.runner import build_service
from contract.events import WatchEvent
from contract.schema import event_to_json
from model.registry import create
from tests.service_helpers import in_thread, produce, read_all, topics, wait_for
from tests.streams import synthetic

ARMS = "control=streamrec,treatment=most_popular"


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arms", "control=nope"], "unknown model 'nope'"),
        (["--arms", "a=isgd,a=streamrec"], "named twice"),
        (["--arms", "control"], "not NAME=MODEL"),
        (["--arms", "a b=isgd"], "arm name"),
        (["--arms", ARMS, "--arm-weights", "1,2,3"], "3 weights for 2 arms"),
        (["--arms", ARMS, "--arm-weights", "control=1,other=1"], "the arms are"),
        (["--arms", ARMS, "--arm-weights", "1,0"], "positive"),
        (["--arms", ARMS, "--arm-settings", "third:dim=4"], "ARM:KEY=VALUE"),
        (["--arm-weights", "1,1"], "need --arms"),
        (["--arms", ARMS, "--model-settings", "dim=8"], "--arm-settings"),
        (["--arms", ARMS, "--arms-learn-from", "some"], "arms_learn_from"),
    ],
)
def test_a_malformed_experiment_fails_at_start_up_naming_the_setting(argv, message):
    with pytest.raises(ConfigError, match=message):
        ServiceConfig.from_args(argv, environ={})


def test_arm_settings_reach_their_arms_model_and_repeat_from_flags_or_environment():
    argv = ["--arms", "control=isgd,treatment=isgd", "--arm-settings", "treatment:k=8"]
    config = ServiceConfig.from_args([*argv, "--arm-settings", "control:k=4"], environ={})
    service = build_service(dataclass_replace(config, checkpoint_dir="none"), with_metrics=False)
    assert [arm.model.k for arm in service.arms] == [4, 8]
    env = {"STREAMREC_ARMS": "a=isgd,b=isgd", "STREAMREC_ARM_SETTINGS": "a:dim=6;b:dim=10"}
    specs = ServiceConfig.from_args([], environ=env).arm_specs
    assert [(s.name, s.settings) for s in specs] == [("a", {"dim": 6}), ("b", {"dim": 10})]


def test_weights_name_arms_or_follow_their_order():
    by_name = parse_arms(ARMS, "treatment=1,control=9", [])
    in_order = parse_arms(ARMS, "9,1", [])
    assert [s.weight for s in by_name] == [s.weight for s in in_order] == [9.0, 1.0]


def dataclass_replace(config: ServiceConfig, **changes) -> ServiceConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


# -- the readout's units ---------------------------------------------------------------------------


def test_the_services_running_per_viewer_sums_are_the_sums_over_viewers():
    """What the service adds batch by batch equals the per-viewer sums computed at the end."""
    service = build_service(ServiceConfig(checkpoint_dir="none", shadow_baseline=False), with_metrics=False)
    rng = np.random.default_rng(5)
    viewers = [f"v{i}" for i in range(30)]
    for v in viewers[:25]:  # five viewers were never shown a list: their events do not count
        service.shown.touch(v, [f"x{j}" for j in range(3)])
    totals = np.zeros(8)
    per_viewer: dict[str, list[int]] = {}
    for _ in range(20):
        batch = [
            WatchEvent(1.0, viewers[rng.integers(30)], f"x{rng.integers(6)}", float(rng.integers(1, 100)))
            for _ in range(40)
        ]
        totals += np.array(service._online(batch), dtype=float)
        for e in batch:
            if e.viewer in viewers[:25]:
                counts = per_viewer.setdefault(e.viewer, [0, 0])
                counts[0] += 1
                counts[1] += e.video in {"x0", "x1", "x2"}
    s, h = np.array(list(per_viewer.values())).T
    shown, hits, _, _, squares, hit_squares, products, n = totals
    assert (shown, hits, n) == (s.sum(), h.sum(), len(per_viewer))
    assert (squares, hit_squares, products) == ((s * s).sum(), (h * h).sum(), (s * h).sum())


# -- the readout on streams whose answer is known --------------------------------------------------


def online_hits(events: list[WatchEvent], model, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per event, as the service counts them: was its viewer shown a list before it (the list
    published after their last batch), and was the video in it."""
    last: dict[str, set[str]] = {}
    shown = np.zeros(len(events), dtype=bool)
    hit = np.zeros(len(events), dtype=bool)
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        for i, e in enumerate(chunk, start):
            previous = last.get(e.viewer)
            if previous is not None:
                shown[i], hit[i] = True, e.video in previous
        model.rank_and_learn(chunk, 10)
        viewers = list(dict.fromkeys(e.viewer for e in chunk))
        for viewer, rec in zip(viewers, model.recommend_many(viewers, n=10), strict=True):
            last[viewer] = set(rec.videos)
    return shown, hit


def counts(viewer_index: np.ndarray, shown: np.ndarray, hit: np.ndarray, n_viewers: int) -> Counts:
    s = np.bincount(viewer_index, shown, n_viewers)
    h = np.bincount(viewer_index, hit, n_viewers)
    return Counts(int(s.sum()), int(h.sum()), (s * s).sum(), (h * h).sum(), (s * h).sum(), int((s > 0).sum()))


def first_verdict(
    events: list[WatchEvent],
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    salt: str,
    alpha: float,
    batch: int = 256,
) -> tuple[int, float] | None:
    """Split viewers by ``salt``, look at the readout after every batch: the events read and the
    p-value when it first fell below ``alpha`` (None: never)."""
    assignment = Assignment({"control": 1.0, "treatment": 1.0}, salt=salt)
    names = list(dict.fromkeys(e.viewer for e in events))
    index = {v: i for i, v in enumerate(names)}
    viewer = np.array([index[e.viewer] for e in events])
    in_treatment = np.array([assignment.arm_of(v) == "treatment" for v in names])[viewer]
    for end in range(batch, len(events) + batch, batch):
        mine = in_treatment[:end]
        a = counts(viewer[:end][~mine], control[0][:end][~mine], control[1][:end][~mine], len(names))
        b = counts(viewer[:end][mine], treatment[0][:end][mine], treatment[1][:end][mine], len(names))
        p = compare(a, b).p_value
        if p < alpha:
            return min(end, len(events)), p
    return None


@pytest.fixture(scope="module")
def replayed() -> tuple[list[WatchEvent], tuple, tuple]:
    events = synthetic(16_000, seed=3)
    return events, online_hits(events, create("streamrec")), online_hits(events, create("most_popular"))


def test_an_a_a_experiment_looked_at_after_every_batch_rarely_declares_a_difference(replayed):
    """Two identical arms, 20 experiments (salts), the readout read after every batch: it may
    declare a difference at alpha 0.05 in at most 10% of them."""
    events, streamrec, _ = replayed
    verdicts = [first_verdict(events, streamrec, streamrec, f"aa-{seed}", 0.05) for seed in range(20)]
    assert sum(v is not None for v in verdicts) <= 2, verdicts


def test_a_planted_winner_is_declared_with_p_below_0_01(replayed):
    """streamrec's lists against most-popular's, on the same viewers: the readout finds the
    better arm, and says so in favour of the right one."""
    events, streamrec, popular = replayed
    assert streamrec[1].sum() / streamrec[0].sum() > popular[1].sum() / popular[0].sum() + 0.02
    verdict = first_verdict(events, popular, streamrec, "planted", 0.01)
    assert verdict is not None, "never declared"
    events_needed, p = verdict
    assert p < 0.01 and events_needed < len(events)


def test_the_event_level_variance_would_not_be_valid_here(replayed):
    """Why the readout's units are viewers: with events as units the same A/A experiments
    declare differences far more often than alpha (see consumer.experiment)."""
    events, (shown, hit), _ = replayed

    def event_level(salt: str) -> bool:
        assignment = Assignment({"control": 1.0, "treatment": 1.0}, salt=salt)
        mine = np.array([assignment.arm_of(e.viewer) == "treatment" for e in events])
        for end in range(256, len(events), 256):
            a = Counts(int(shown[:end][~mine[:end]].sum()), int(hit[:end][~mine[:end]].sum()))
            b = Counts(int(shown[:end][mine[:end]].sum()), int(hit[:end][mine[:end]].sum()))
            if compare(a, b).p_value < 0.05:
                return True
        return False

    assert sum(event_level(f"aa-{seed}") for seed in range(20)) >= 4


# -- the service with arms, on the real broker -----------------------------------------------------


@contextlib.contextmanager
def serving(config: ServiceConfig, prepare: Callable | None = None) -> Iterator:
    """The service of ``config`` in a thread, with metrics in a registry of its own."""
    service = build_service(config, with_metrics=False)
    service.metrics = ServiceMetrics(
        models=service.model_names, registry=CollectorRegistry(), arms=service.arm_labels
    )
    if prepare is not None:
        prepare(service)
    with in_thread(service):
        yield service


def experiment_config(kafka_bootstrap: str, names: dict, checkpoints: Path | str = "none", **extra):
    return ServiceConfig(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{names['input_topic']}",
        metrics_port=0,
        checkpoint_dir=str(checkpoints),
        **names,
        **({"arms": ARMS, "arm_weights": "1,1", "experiment_salt": "test-exp"} | extra),
    )


def send(kafka_bootstrap: str, topic: str, events: list[WatchEvent]) -> None:
    produce(kafka_bootstrap, topic, [(e.viewer.encode(), event_to_json(e)) for e in events])


def sample(service, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


def test_each_viewer_is_served_by_their_arm_and_every_arm_is_measured(kafka_bootstrap, new_topic, tmp_path):
    names = topics(new_topic, partitions=2)
    events = synthetic(3000, seed=21)
    config = experiment_config(kafka_bootstrap, names, tmp_path / "ckpt")
    with serving(config) as service:
        send(kafka_bootstrap, names["input_topic"], events)
        assert wait_for(lambda: service.model_events >= len(events), 120), service.failed
        learned = {arm.name: arm.model.stats().events_learned for arm in service.arms}
    # Every arm learned every event (the default: compare models on equal data).
    assert learned == {"control": len(events), "treatment": len(events)}

    assignment = Assignment({"control": 1.0, "treatment": 1.0}, salt="test-exp")
    lists = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, names["output_topic"], expect=100)]
    assert lists
    model_of = {"control": "streamrec", "treatment": "most_popular"}
    for message in lists:
        assert message["arm"] == assignment.arm_of(message["viewer"])
        assert message["model"] == model_of[message["arm"]]
    share = sum(m["arm"] == "treatment" for m in lists) / len(lists)
    assert 0.3 < share < 0.7  # half the viewers, within what 300 viewers allow

    for arm, model in model_of.items():
        assert sample(service, "streamrec_experiment_arm_share_ratio", arm=arm, model=model) == 0.5
        evaluated = sample(service, "streamrec_quality_evaluated_total", model=model, arm=arm)
        assert evaluated > 0.5 * len(events)  # each arm is tested on the whole stream
        shown = sample(service, "streamrec_online_shown_events_total", arm=arm)
        hits = sample(service, "streamrec_online_hit_events_total", arm=arm)
        assert 0 < hits < shown < len(events)
        assert sample(service, "streamrec_experiment_shown_events", arm=arm) == shown  # no restart yet
        assert sample(service, "streamrec_experiment_shown_squares", arm=arm) >= shown
        assert 0 < sample(service, "streamrec_experiment_viewers", arm=arm) < 300
        assert sample(service, "streamrec_online_hit_watch_seconds_total", arm=arm) > 0
        assert 0 < sample(service, "streamrec_coverage_ratio", model=model, arm=arm) <= 1
    # An event counts as shown only when its viewer had a list from an earlier batch.
    shown = sum(sample(service, "streamrec_online_shown_events_total", arm=a) for a in model_of)
    first_of = {}
    for i, e in enumerate(events):
        first_of.setdefault(e.viewer, i)
    returning = sum(first_of[e.viewer] < i for i, e in enumerate(events))
    assert 0.5 * returning < shown <= returning


def test_a_restart_keeps_every_arms_model_and_stopping_the_experiment_keeps_the_controls(
    kafka_bootstrap, new_topic, tmp_path
):
    names = topics(new_topic)
    first, second = synthetic(1500, seed=31), synthetic(800, seed=32)
    config = experiment_config(kafka_bootstrap, names, tmp_path / "ckpt")
    with serving(config) as service:
        send(kafka_bootstrap, names["input_topic"], first)
        assert wait_for(lambda: service.model_events >= len(first), 120)
    tallies = {arm: list(t) for arm, t in service.tallies.items()}
    assert all(t[0] > 0 for t in tallies.values())
    checkpoint = max((tmp_path / "ckpt").rglob("ckpt-*"))
    assert {p.name for p in checkpoint.glob("*.npz")} >= {"model.npz", "arm-treatment.npz", "experiment.npz"}

    with serving(config) as service:  # the same experiment again: both models come back
        assert wait_for(lambda: service.model_events >= len(first), 60)  # restored when it runs
        assert [arm.model.stats().events_learned for arm in service.arms] == [len(first)] * 2
        # ... and the readout goes on from where it was, not from zero.
        assert {arm: list(t) for arm, t in service.tallies.items()} == tallies
        assert (
            sample(service, "streamrec_experiment_shown_events", arm="treatment") == tallies["treatment"][0]
        )
        assert len(list(service.viewer_hits.keys())) == tallies["control"][7] + tallies["treatment"][7]
        send(kafka_bootstrap, names["input_topic"], second)
        assert wait_for(lambda: service.model_events >= len(first) + len(second), 120)
    assert service.arms.arms[1].model.stats().events_learned == len(first) + len(second)

    stopped = experiment_config(kafka_bootstrap, names, tmp_path / "ckpt", arms="", arm_weights="")
    with serving(stopped) as service:  # the experiment is over: the control's model serves on
        assert wait_for(lambda: service.model_events >= len(first) + len(second), 60)
        assert len(service.arms) == 1 and service.model.name == "streamrec"
        assert service.model.stats().events_learned == len(first) + len(second)


@pytest.mark.parametrize("learn_from", ["all", "own"])
def test_an_arm_whose_model_fails_falls_back_to_the_controls_lists(kafka_bootstrap, new_topic, learn_from):
    """The failed arm's viewers get the control's lists, which never show a video they watched:
    when each arm learns from its own viewers only, the control never learned their watches, so
    it leaves out what their own arm's model says they watched (102 of 154 such lists showed a
    watched video before)."""
    names = topics(new_topic)
    events = synthetic(2000, seed=41)

    def break_treatment(service) -> None:
        treatment = service.arms.arms[1]
        learn = treatment.model.rank_and_learn
        calls = [0]

        def fails_on_the_third_batch(batch, n):
            calls[0] += 1
            if calls[0] == 3:
                raise FloatingPointError("a bug in the treatment")
            return learn(batch, n)

        treatment.model.rank_and_learn = fails_on_the_third_batch

    config = experiment_config(kafka_bootstrap, names, max_batch_events=100, arms_learn_from=learn_from)
    with serving(config, break_treatment) as service:
        send(kafka_bootstrap, names["input_topic"], events)
        assert wait_for(lambda: service.model_events >= len(events), 120), service.failed
        treatment = service.arms.arms[1]
        assert not treatment.healthy
        fallbacks = sample(
            service, "streamrec_experiment_fallback_lists_total", arm="treatment", reason="exception"
        )
        assert fallbacks == treatment.fallbacks["exception"] > 0
        assert sample(service, "streamrec_experiment_arm_healthy", arm="treatment") == 0
        assert sample(service, "streamrec_experiment_arm_healthy", arm="control") == 1
    lists = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, names["output_topic"], expect=500)]
    treated = [m for m in lists if m["arm"] == "treatment"]
    # Before the failure its lists were its own; after it, the control's model made them.
    assert {m["model"] for m in treated} == {"most_popular", "streamrec"}
    assert treated[-1]["model"] == "streamrec"
    assert all(m["model"] == "streamrec" for m in lists if m["arm"] == "control")
    watched: dict[str, set[str]] = {}
    upto = 0
    for m in sorted(lists, key=lambda m: m["source"]["offset"]):  # one partition: offset = index
        for e in events[upto : m["source"]["offset"] + 1]:
            watched.setdefault(e.viewer, set()).add(e.video)
        upto = m["source"]["offset"] + 1
        shown = {item["video"] for item in m["items"]}
        assert not shown & watched[m["viewer"]], (m["arm"], m["model"], sorted(shown & watched[m["viewer"]]))


def test_an_arm_whose_guard_trips_serves_the_controls_lists_for_that_batch(kafka_bootstrap, new_topic):
    names = topics(new_topic)
    events = synthetic(600, seed=51)

    def trip_every_batch(service) -> None:
        model = service.arms.arms[1].model
        stats, trips = model.stats, [0]

        def tripping():
            trips[0] += 1
            return stats()._replace(guard_trips=trips[0])

        model.stats = tripping

    config = experiment_config(kafka_bootstrap, names)
    with serving(config, trip_every_batch) as service:
        send(kafka_bootstrap, names["input_topic"], events)
        assert wait_for(lambda: service.model_events >= len(events), 120), service.failed
        treatment = service.arms.arms[1]
        assert treatment.healthy  # a guard trip is one batch's fallback, not a failure
        assert (
            sample(service, "streamrec_experiment_fallback_lists_total", arm="treatment", reason="guard") > 0
        )
    lists = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, names["output_topic"], expect=50)]
    assert all(m["model"] == "streamrec" for m in lists)


def test_arms_learning_from_their_own_viewers_see_only_those_events(kafka_bootstrap, new_topic):
    names = topics(new_topic)
    events = synthetic(2000, seed=61)
    config = experiment_config(kafka_bootstrap, names, arms_learn_from="own")
    with serving(config) as service:
        send(kafka_bootstrap, names["input_topic"], events)
        assert wait_for(lambda: service.model_events >= len(events), 120), service.failed
        learned = [arm.model.stats().events_learned for arm in service.arms]
    assignment = Assignment({"control": 1.0, "treatment": 1.0}, salt="test-exp")
    own = sum(assignment.arm_of(e.viewer) == "control" for e in events)
    assert learned == [own, len(events) - own]
