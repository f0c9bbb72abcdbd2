"""The service's configuration: flags, environment, validation, and choices that cannot work."""

from __future__ import annotations

import pytest

from consumer.config import ConfigError, ServiceConfig
from consumer.runner import build_service, main


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
    ],
)
def test_bad_values_fail_at_start_naming_the_setting(argv, env, message):
    with pytest.raises(ConfigError, match=message):
        ServiceConfig.from_args(argv, environ=env)


def test_checkpoints_can_be_turned_off():
    assert ServiceConfig(checkpoint_dir="none").checkpoint_path is None
    assert ServiceConfig(checkpoint_dir="/var/lib/streamrec").checkpoint_path.name == "streamrec"


def test_a_model_that_cannot_be_saved_is_refused_when_checkpoints_are_on(tmp_path):
    with pytest.raises(ConfigError, match="--checkpoint-dir none"):
        build_service(ServiceConfig(model="most_popular", checkpoint_dir=str(tmp_path)), with_metrics=False)
    service = build_service(ServiceConfig(model="most_popular", checkpoint_dir="none"), with_metrics=False)
    assert service.store is None


def test_serve_reports_configuration_errors_in_one_line(capsys):
    assert main(["--model", "no-such-model", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamrec serve: error: unknown model 'no-such-model'")
    assert "Traceback" not in err
