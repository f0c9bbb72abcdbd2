#!/usr/bin/env bash
# Make a fresh machine ready: a virtualenv with streamrec and its test tools.
# Idempotent and quick when everything is already there. Kafka's jars and Prometheus are
# installed by scripts/kafka-jars.sh and scripts/prometheus.sh, which the test command calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.streamrec-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
    touch "$stamp"
fi
