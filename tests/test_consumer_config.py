"""The service's configuration: flags, environment, validation, and choices that cannot work."""

from __future__ import annotations

import os

import pytest

from consumer.checkpoint import FolderTaken, claim_worker
from consumer.config import ConfigError, ServiceConfig
from consumer.runner import build_service, main, worker_config


def test_flags_beat_environment_beat_defaults():
    env = {"STREAMREC_GROUP_ID": "from-env", "STREAMREC_TOP_N": "7", "STREAMREC_EXACTLY_ONCE": "yes"}
    cfg = ServiceConfig.from_args(["--group-id", "from-flag"], environ=env)
    assert (cfg.group_id, cfg.top_n, cfg.exactly_once) == ("from-flag", 7, True)
    assert cfg.worker == "from-flag"
    assert ServiceConfig.from_args([], environ={}).bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--top-n", "0"], {}, "top_n"),
        (["--output-topic", "watch-events"], {}, "distinct"),
        (["--auto-offset-reset", "middle"], {}, "auto_offset_reset"),
        ([], {"STREAMREC_EXACTLY_ONCE": "perhaps"}, "STREAMREC_EXACTLY_ONCE"),
        ([], {"STREAMREC_METRICS_PORT": "eighty"}, "STREAMREC_METRICS_PORT"),
        (["--output-compression", "brotli"], {}, "output_compression must be one of none, gzip"),
        (["--max-batch-events", "0"], {}, "max_batch_events"),
        (["--poll-budget-ms", "0"], {}, "poll_budget_ms"),
        (["--sync-precision", "int4"], {}, "sync_precision must be one of float32, int16, int8"),
    ],
)
def test_bad_values_fail_at_start_naming_the_setting(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        ServiceConfig.from_args(argv, environ=env)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_the_output_codec_is_a_setting_with_an_environment_variable(codec):
    from consumer.clients import make_producer_options

    config = ServiceConfig.from_args([], environ={"STREAMREC_OUTPUT_COMPRESSION": codec})
    assert config.output_compression == codec
    assert make_producer_options(config)["compression_type"] == (None if codec == "none" else codec)
    assert ServiceConfig.from_args(["--output-compression", codec], environ={}).output_compression == codec


def test_an_output_codec_without_its_library_stops_start_up_in_one_line(monkeypatch, capsys):
    from kafka import codec

    monkeypatch.setattr(codec, "has_zstd", lambda: False)
    with pytest.raises(ConfigError, match="output_compression zstd: kafka-python finds no library for it"):
        ServiceConfig(output_compression="zstd")
    assert main(["--output-compression", "zstd", "--metrics-port", "0", "--checkpoint-dir", "none"]) == 2
    assert "reinstall it" in capsys.readouterr().err


def test_checkpoints_can_be_turned_off():
    assert ServiceConfig(checkpoint_dir="none").checkpoint_path is None
    assert ServiceConfig(checkpoint_dir="/var/lib/streamrec").checkpoint_path.name == "streamrec"


def stream(n: int = 60):
    from contract.events import WatchEvent

    return [WatchEvent(float(t), f"u{t % 7}", f"v{t % 5}") for t in range(n)]


def test_a_baseline_is_checkpointed_and_restored_like_the_model(tmp_path):
    """Every model can be saved, so a baseline served with checkpoints on restarts where it was."""
    config = ServiceConfig(model="isgd", checkpoint_dir=str(tmp_path))
    before = build_service(config, with_metrics=False)
    before._learn(stream())
    checkpoint = before.checkpoint()
    assert checkpoint is not None and checkpoint.extra["model"] == "isgd"
    before.claim.release()  # the first process has ended: the restarted one gets its folder
    after = build_service(config, with_metrics=False)
    assert after.restore().events_learned == 60 == after.model_events
    assert after.model.stats() == before.model.stats()
    assert after.model.recommend("u1").videos == before.model.recommend("u1").videos


def test_serve_reports_configuration_errors_in_one_line(capsys):
    assert main(["--model", "no-such-model", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamrec serve: error: unknown model 'no-such-model'")
    assert "Traceback" not in err


def test_model_settings_build_the_served_model():
    cfg = ServiceConfig.from_args([], environ={"STREAMREC_MODEL_SETTINGS": "dim=8,shortlist=null"})
    model = build_service(cfg, with_metrics=False).model
    assert (model.dim, model.shortlist) == (8, None)
    # The flag beats the environment, and an unset one leaves every default alone.
    assert build_service(ServiceConfig(model_settings="dim=4"), with_metrics=False).model.dim == 4
    assert build_service(ServiceConfig(), with_metrics=False).model.dim == 32


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("dimm=8", "no setting 'dimm'; its settings: dim, "),
        ("dim", "expected key=value, got 'dim'"),
        ("dim=eight", "setting 'dim' must be int, got 'eight'"),
        ("recency=2", "recency must be in (0, 1], got 2"),  # a value the model itself refuses
    ],
)
def test_bad_model_settings_stop_start_up_in_one_line(settings, message, capsys):
    assert main(["--model-settings", settings, "--metrics-port", "0", "--checkpoint-dir", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamrec serve: error: model_settings: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_restored_checkpoint_keeps_its_settings_and_says_so(tmp_path, caplog):
    def service(settings: str):
        config = ServiceConfig(model_settings=settings, checkpoint_dir=str(tmp_path))
        return build_service(config, with_metrics=False)

    assert service("dim=8").checkpoint() is not None
    again = service("dim=16")
    with caplog.at_level("WARNING", logger="consumer"):
        assert again.restore() is not None
    assert again.model.dim == 8
    assert "keeps its own settings" in caplog.text


def test_the_shadow_baseline_is_checkpointed_with_the_model_under_its_own_name(tmp_path):
    """After a restart the dashboards' popularity baseline resumes where it was, instead of
    starting again from nothing while the model does not."""
    config = ServiceConfig(checkpoint_dir=str(tmp_path))
    before = build_service(config, with_metrics=False)
    assert before.model_names == ("streamrec", "recent_popular")
    before._learn(stream())
    checkpoint = before.checkpoint()
    assert (checkpoint.path / "recent_popular.npz").is_file()
    assert checkpoint.extra == {"model": "streamrec", "shadow": "recent_popular"}
    before.claim.release()  # the first process has ended: the restarted one gets its folder
    after = build_service(config, with_metrics=False)
    assert after.shadow.stats().videos == 0  # a fresh service has an empty baseline...
    after.restore()
    assert after.shadow.recommend("nobody").videos == before.shadow.recommend("nobody").videos
    assert after.shadow.stats().videos == 5 and after.model.stats().events_learned == 60


def test_the_shadow_baseline_is_not_run_beside_itself():
    """Served as the model, the baseline gets no shadow: two series under one label would add up."""
    service = build_service(ServiceConfig(model="recent_popular", checkpoint_dir="none"), with_metrics=False)
    assert service.shadow is None and service.model_names == ("recent_popular",)


def test_workers_started_side_by_side_from_one_folder_never_share_a_checkpoint_folder(tmp_path):
    config = ServiceConfig(checkpoint_dir=str(tmp_path), shadow_baseline=False)
    first, second = build_service(config, with_metrics=False), build_service(config, with_metrics=False)
    assert (first.store.root.name, second.store.root.name) == ("streamrec", "streamrec-2")
    assert first.config.worker != second.config.worker
    first.claim.release()  # the first stopped (or crashed): a restarted worker takes its folder and name
    again = build_service(config, with_metrics=False)
    assert (again.store.root, again.config.worker) == (first.store.root, first.config.worker)


def test_workers_with_the_same_settings_on_two_machines_get_names_of_their_own(tmp_path):
    """Each machine has its folder: were both workers named for the group, Kafka would take them
    for one (each commits over the other's partitions, fences its transactions, takes its update
    records for its own). Each name outlives the process: it is kept in the folder."""
    machines = [ServiceConfig(checkpoint_dir=str(tmp_path / m), shadow_baseline=False) for m in "ab"]
    a, b = (build_service(config, with_metrics=False) for config in machines)
    assert a.config.worker != b.config.worker
    assert all(s.config.worker.startswith("streamrec-") for s in (a, b))
    name = a.config.worker
    a.claim.release()
    assert build_service(machines[0], with_metrics=False).config.worker == name


def test_a_folder_keeps_the_name_it_was_checkpointed_under(tmp_path, caplog):
    """A folder an older version checkpointed under the folder's name keeps that name (its
    commits carry it: under another, its partitions would start from them, not from its
    checkpoint); a worker told to use a folder by name serves under the name kept there."""
    (tmp_path / "old" / "streamrec" / "ckpt-000000000001").mkdir(parents=True)
    legacy = claim_worker(tmp_path / "old", "streamrec")
    assert legacy.name == "streamrec"
    legacy.release()
    first = claim_worker(tmp_path / "new", "streamrec")
    name = first.name
    first.release()
    config = ServiceConfig(checkpoint_dir=str(tmp_path / "new"), worker_id="streamrec", shadow_baseline=False)
    with caplog.at_level("WARNING", logger="consumer"):
        assert build_service(config, with_metrics=False).config.worker == name != "streamrec"
    assert "belongs to a worker of another name" in caplog.text


def test_a_worker_named_by_the_user_whose_folder_is_held_stops_with_a_clear_error(tmp_path):
    config = ServiceConfig(checkpoint_dir=str(tmp_path), worker_id="w1", shadow_baseline=False)
    held = build_service(config, with_metrics=False)
    with pytest.raises(FolderTaken, match="another running process holds its checkpoint folder"):
        build_service(config, with_metrics=False)
    assert held.config.worker == "w1"


@pytest.mark.parametrize(
    ("settings", "topic"),
    [
        ({}, None),  # a lone worker: its checkpoint holds its viewers
        ({"workers": 2}, "streamrec-w-viewer-state"),
        ({"workers": 0}, "streamrec-w-viewer-state" if (os.cpu_count() or 1) > 1 else None),  # one per core
        ({"sync_every": 1024}, "streamrec-w-viewer-state"),  # one of a group syncing one model
        ({"changelog_topic": "on"}, "streamrec-w-viewer-state"),
        ({"changelog_topic": "ON "}, "streamrec-w-viewer-state"),
        ({"changelog_topic": "none", "sync_every": 1024}, None),
        ({"changelog_topic": "my-changelog"}, "my-changelog"),
    ],
)
def test_the_viewer_state_changelog_is_kept_by_workers_that_hand_partitions_over(settings, topic):
    assert ServiceConfig(input_topic="w", **settings).changelog_topic_name == topic


def test_the_sync_precisions_are_the_models():
    """The service offers exactly the precisions the replica knows, and its default is one."""
    from consumer.config import SYNC_PRECISION, SYNC_PRECISIONS
    from model.replica import PRECISIONS

    assert tuple(PRECISIONS) == SYNC_PRECISIONS and SYNC_PRECISION in SYNC_PRECISIONS
    assert ServiceConfig.from_args(["--sync-precision", "int8"], environ={}).sync_precision == "int8"


@pytest.mark.parametrize(
    ("argv", "environ", "sync_every"),
    [
        ([], {}, 0),  # a lone worker: nobody to hear its updates
        (["--workers", "2"], {}, 1024),  # the workers of --workers N are one model
        (["--workers", "0"], {}, 1024 if (os.cpu_count() or 1) > 1 else 0),  # one per core
        (["--workers", "2", "--sync-every", "0"], {}, 0),  # own models, asked for
        (["--workers", "2", "--sync-every", "512"], {}, 512),
        (["--sync-every", "2048"], {}, 2048),  # a lone serve of a group on many machines
        (["--workers", "2", "--model", "cooccurrence"], {}, 0),  # only the default model syncs
        (["--workers", "2", "--arms", "control=most_popular,treatment=streamrec"], {}, 0),
        # an experiment: the arms learn alike, each from its worker's share (see the warning)
        (["--workers", "2", "--arms", "control=streamrec,treatment=most_popular"], {}, 0),
        (["--workers", "2"], {"STREAMREC_SYNC_EVERY": "0"}, 0),
        (["--workers", "3", "--sync-every", "auto"], {"STREAMREC_SYNC_EVERY": "0"}, 1024),
        ([], {"STREAMREC_SYNC_EVERY": "AUTO"}, 0),
    ],
)
def test_the_workers_of_one_command_are_one_model_unless_told_otherwise(argv, environ, sync_every):
    config = ServiceConfig.from_args(argv, environ=environ)
    assert config.sync_every == sync_every
    # what a worker of the set runs with: its own process, the same setting
    assert worker_config(config, 1).sync_every == sync_every


def test_sync_every_is_auto_or_a_count(capsys):
    from consumer.config import DEFAULT_MODEL
    from model.registry import DEFAULT_MODEL as REGISTRY_DEFAULT

    assert DEFAULT_MODEL == REGISTRY_DEFAULT  # the model auto turns the exchange on for
    for refused in ("-3", "often"):
        with pytest.raises(SystemExit) as stopped:  # argparse's usage error
            main(["--sync-every", refused])
        assert stopped.value.code == 2
        assert f"argument --sync-every: invalid auto or a count value: '{refused}'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sync_every must be auto"):
        ServiceConfig(sync_every=-2)
    with pytest.raises(ConfigError, match="STREAMREC_SYNC_EVERY"):
        ServiceConfig.from_args([], environ={"STREAMREC_SYNC_EVERY": "sometimes"})


def test_a_live_experiment_with_one_model_over_the_group_is_told_its_arms_are_unlike(caplog):
    """Asked for explicitly, --sync-every makes only the control one model over the group: the
    other arms learn from the worker's share of the stream, and the service says so."""
    experiment = {"arms": "control=streamrec,treatment=most_popular", "checkpoint_dir": "none"}
    with caplog.at_level("WARNING", logger="consumer"):
        build_service(ServiceConfig(sync_every=1024, **experiment), with_metrics=False)
    assert "only the control arm is one model over the group" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="consumer"):
        build_service(ServiceConfig(**experiment), with_metrics=False)  # each worker its own: alike
    assert "only the control arm" not in caplog.text


def test_a_group_never_takes_the_checkpoint_folder_another_group_left(tmp_path):
    """Group ``orders``' second worker keeps its checkpoints in ``orders-2``; a group named
    ``orders-2`` (its first worker's folder is ``orders-2`` too) must not restore that model
    and start at its offsets: it takes a folder of its own, and a worker named to use that
    folder for another group is refused."""
    first, second = (
        claim_worker(tmp_path, "orders", group="orders"),
        claim_worker(tmp_path, "orders", group="orders"),
    )
    second.release()
    other = claim_worker(tmp_path, "orders-2", group="orders-2")
    assert other.slot == "orders-2-2" and other.name != second.name
    with pytest.raises(FolderTaken, match="belongs to group 'orders'"):
        claim_worker(tmp_path, "orders-2", fixed=True, group="orders-2")
    again = claim_worker(tmp_path, "orders", group="orders")  # the group's own restart
    assert (again.slot, again.name) == ("orders-2", second.name)
    first.release()


def test_a_checkpoint_of_another_model_stops_start_up_with_the_fix_instead_of_a_restart_loop(tmp_path):
    """``--model cooccurrence`` pointed at a folder the default model checkpointed: one clear
    error (a user error, so ``--workers N`` does not restart the worker for ever)."""
    from contract.errors import UserError

    before = build_service(ServiceConfig(checkpoint_dir=str(tmp_path)), with_metrics=False)
    before._learn(stream())
    assert before.checkpoint() is not None
    before.claim.release()
    other = build_service(
        ServiceConfig(model="cooccurrence", checkpoint_dir=str(tmp_path)), with_metrics=False
    )
    with pytest.raises(
        UserError, match="holds model 'streamrec', not 'cooccurrence': serve it with --model streamrec"
    ):
        other.restore()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"session_timeout_ms": 2000}, "session_timeout_ms must be 6000..1800000"),
        ({"session_timeout_ms": 3_600_000}, "session_timeout_ms must be 6000..1800000"),
        ({"poll_budget_ms": float("inf")}, "poll_budget_ms must be > 0 and finite"),
        ({"worker_id": "edge/1"}, "worker_id names a checkpoint folder"),
        (
            {"metrics_port": 65535, "workers": 2},
            "worker i of --workers serves on metrics_port \\+ i, up to 65536",
        ),
    ],
)
def test_settings_kafka_or_the_machine_would_refuse_later_are_refused_at_start_up(settings, message):
    with pytest.raises(ConfigError, match=message):
        ServiceConfig(**settings)
