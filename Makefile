# The two commands the README starts with, and a few helpers around them.
.PHONY: demo test lint bench setup

setup:
	@scripts/bootstrap.sh

demo: setup
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
