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
	@data="$(or $(DATA),../shared/data/ml-100k/u.data)"; \
	if [ ! -e "$$data" ]; then \
		echo "make evaluate DATA=path/to/u.data (no $$data here; 'streamrec data fetch movielens-100k' downloads it: read its licence)" >&2; \
		exit 2; \
	fi; \
	.venv/bin/streamrec evaluate "$$data" --model all

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
