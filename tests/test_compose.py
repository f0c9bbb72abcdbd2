"""The docker-compose stack, checked as far as a machine without a Docker engine can.

No engine runs here, so the stack itself is not started: these tests check that the compose
file parses and is wired consistently (health checks behind every ``service_healthy``, every
mounted file present, Prometheus scraping the port the consumer serves, Grafana's datasource
uid the one the dashboard's panels use), and that the image runs the commands the README
documents, so what people read is what the containers do.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is a test dependency (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
README = REPO / "README.md"
MONITORING = REPO / "monitoring"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def expand_defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset, as on a fresh machine."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def readme_commands() -> set[str]:
    """Every line of the README's shell code blocks, normalised to single spaces."""
    blocks = re.findall(r"```(?:sh|bash|console|shell)\n(.*?)```", README.read_text(), flags=re.S)
    lines = set()
    for block in blocks:
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if line:
                lines.add(" ".join(line.split()))
    return lines


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def exec_form(args: str) -> str:
    """A Dockerfile CMD/ENTRYPOINT (exec JSON or shell form) as one command line."""
    return " ".join(json.loads(args)) if args.startswith("[") else args


def test_the_stack_has_the_five_services(compose):
    assert set(compose["services"]) == {"kafka", "consumer", "producer", "prometheus", "grafana"}


def test_kafka_is_the_official_image_as_a_single_kraft_node(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"].split(":")[0] == "apache/kafka"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1  # a single node cannot hold 3 replicas
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised
    bootstrap = compose["services"]["consumer"]["environment"]["STREAMREC_BOOTSTRAP_SERVERS"]
    assert expand_defaults(bootstrap) == "kafka:9092"


def test_kafka_keeps_its_log_in_the_volume_it_mounts(compose):
    """The image's default log folder is under /tmp: topics and committed offsets would not
    survive ``docker compose down && up``, while the consumer's checkpoints (a volume) would."""
    kafka = compose["services"]["kafka"]
    mounted = {volume.split(":")[1] for volume in kafka["volumes"]}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounted


def test_every_kafka_connection_setting_reaches_the_consumer_and_the_producer(compose):
    from contract.connection import ENVIRONMENT

    for name in ("consumer", "producer"):
        env = compose["services"][name]["environment"]
        missing = set(ENVIRONMENT.values()) - set(env)
        assert not missing, f"{name} does not pass {sorted(missing)} through"
        for variable in ENVIRONMENT.values():
            # Passed through from the host, with an empty or a working default.
            assert env[variable].startswith(f"${{{variable}:-"), variable


def test_every_healthy_dependency_has_a_health_check(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
    # From cold: the consumer waits for the broker, the producer for the consumer.
    assert services["consumer"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["producer"]["depends_on"]["consumer"]["condition"] == "service_healthy"


def test_every_file_the_stack_mounts_or_builds_exists(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            assert (context / "Dockerfile").is_file(), name
        for volume in service.get("volumes", []):
            source = expand_defaults(volume.split(":")[0])
            if source.startswith("./") and source != "./data":  # ./data: the user's data, optional
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_every_replica_of_the_consumer_on_the_port_it_serves(compose):
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    found = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    port = int(compose["services"]["consumer"]["environment"]["STREAMREC_METRICS_PORT"])
    assert any("consumer" in sd["names"] and sd["type"] == "A" and sd["port"] == port for sd in found)
    # `--scale consumer=N` needs a host port per replica, not one fixed port.
    (mapping,) = compose["services"]["consumer"]["ports"]
    assert mapping.split(":")[1] == str(port) and "-" in mapping.split(":")[0]


def test_the_consumers_replicas_are_one_model(compose):
    """``--scale consumer=N`` runs N lone ``streamrec serve``: each must be told to share its
    video state (else each learns its own model) and to keep its viewers' changelog."""
    from consumer.config import ServiceConfig

    environment = {
        k: expand_defaults(str(v)) for k, v in compose["services"]["consumer"]["environment"].items()
    }
    argv = shlex.split(compose["services"]["consumer"]["command"])[2:]  # after `streamrec serve`
    config = ServiceConfig.from_args(argv, environ=environment)
    assert config.sync_every > 0 and config.changelog_topic_name


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool comes with Prometheus (scripts/prometheus.sh)"
)
def test_prometheus_accepts_the_stacks_config():
    result = subprocess.run(
        ["promtool", "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_matches_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    sources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/streamrec.yml").read_text())
    dashboard = json.loads((MONITORING / "grafana/dashboards/streamrec.json").read_text())

    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert providers["providers"][0]["options"]["path"] == mounts["./monitoring/grafana/dashboards"]
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    used = {
        t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", []) if "datasource" in t
    }
    assert used == {source["uid"]}
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_the_image_copies_every_package():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {p.rstrip("*") for p in packages["include"]}
    copied = {args.split()[0] for instruction, args in dockerfile_instructions() if instruction == "COPY"}
    assert wanted <= copied
    assert ("FROM", "python:3.11-slim") in dockerfile_instructions()


def test_the_image_runs_the_readmes_commands(compose):
    documented = readme_commands()
    instructions = dockerfile_instructions()
    installs = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs streamrec with pip"
    for command in installs:
        assert command in documented, f"Dockerfile runs {command!r}, the README does not show it"
    (cmd,) = [exec_form(args) for instruction, args in instructions if instruction == "CMD"]
    assert cmd in documented
    for name in ("consumer", "producer"):
        command = " ".join(shlex.split(expand_defaults(compose["services"][name]["command"])))
        assert command in documented, f"compose runs {command!r} in {name}, the README does not show it"


def test_the_readme_says_the_stack_was_not_run_here():
    text = README.read_text()
    assert "docker compose up" in text
    assert re.search(r"not (been )?(run|started|tested)", text, flags=re.I)


def test_the_image_compiles_the_kernels_the_service_imports(tmp_path):
    """The Dockerfile's warm-up runs in /app, beside a copy of the sources: it must compile the
    installed package (which ``streamrec serve`` imports, and numba caches by its folder), not
    that copy. Run here in a folder holding a copy of model/, as in the image."""
    (warm_up,) = [
        args for instruction, args in dockerfile_instructions() if instruction == "RUN" and "warm_up" in args
    ]
    shutil.copytree(REPO / "model", tmp_path / "model", ignore=shutil.ignore_patterns("__pycache__"))
    probe = warm_up.replace("kernels.warm_up()", "print(kernels.__file__)")
    assert probe != warm_up
    argv = shlex.split(probe)
    assert argv[0] == "python"

    found = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert Path(found.stdout.strip()).resolve() == (REPO / "model" / "compiled.py").resolve()
