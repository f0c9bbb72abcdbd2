# The two commands the README starts with, and a few helpers around them.
.PHONY: demo evaluate test lint bench setup

setup:
	@scripts/bootstrap.sh

# The whole pipeline on this machine: local Kafka broker, the service, a synthetic stream.
# DATA=path/to/u.data replays a MovieLens file instead.
demo: setup
	scripts/kafka-jars.sh >/dev/null
	.venv/bin/streamrec demo $(if $(DATA),--data $(DATA))

# Offline: every model on a file of events, test-then-train (MovieLens 100K by default).
evaluate: setup
	.venv/bin/streamrec evaluate $(or $(DATA),../shared/data/ml-100k/u.data) --model all

test: setup
	scripts/kafka-jars.sh
	scripts/prometheus.sh
	.venv/bin/ruff check .
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup
	.venv/bin/python bench/quality.py
