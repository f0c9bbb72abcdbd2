"""``streamrec demo``, the README's first command, end to end on a real broker.

The demo is what a new user runs first: it must learn every event it sends, show the model
beating the popularity baseline on its own synthetic stream, dead-letter its malformed events
and print lists read back from the output topic, on a plain broker and on a secured one.
"""

from __future__ import annotations

import re

import pytest

from streamrec.cli import main

pytestmark = pytest.mark.kafka

SMALL = ["--events", "6000", "--viewers", "300", "--videos", "500", "--rate", "6000", "--metrics-port", "0"]


def check_output(out: str, events: int) -> None:
    learned = re.search(r"\[4/4\] Learned ([\d,]+) events", out)
    assert learned and int(learned.group(1).replace(",", "")) == events, out
    summary = re.search(r"HR@10: ([\d.]+) for 'streamrec' vs ([\d.]+) for 'recent_popular'", out)
    assert summary, out
    model, baseline = float(summary.group(1)), float(summary.group(2))
    assert model > 1.2 * baseline, f"the model ({model}) does not beat popularity ({baseline})"
    dead = out.strip().splitlines()
    table = [line for line in dead if re.match(r"\s+\d+s\s", line)]
    assert table and int(table[-1].split()[-1]) == events // 1000  # one malformed event in 1000
    assert len(re.findall(r"viewer \S+: \S+", out)) == 3  # sample lists read back


def test_the_demo_on_a_given_broker(kafka_bootstrap, capsys):
    assert main(["demo", *SMALL, "--bootstrap-servers", kafka_bootstrap]) == 0
    check_output(capsys.readouterr().out, 6000)


def test_the_demo_on_a_secured_local_broker(capsys):
    assert main(["demo", *SMALL, "--secure"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ca: \S+ca\.pem", out)
    check_output(out, 6000)
