"""Reading watch events from files (``producer.readers``), and the replay and synth commands'
checks that run before any broker is contacted: what the service would dead-letter is refused
with the file's line, never sent as if it were fine."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from producer.readers import DataFormatError, read_events
from streamrec.cli import main

#: No broker listens here: a command that got as far as connecting would fail differently.
NO_BROKER = ["--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "1"]


def ratings_csv(path: Path, rows: list[str], header: str = "userId,movieId,rating,timestamp") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_a_timestamp_in_milliseconds_is_refused_with_its_line(tmp_path):
    path = ratings_csv(tmp_path / "ratings.csv", ["1,1,4.0,1700000000", "2,5,3.0,1700000001000"])
    with pytest.raises(DataFormatError, match=r"ratings\.csv:3: timestamp '1700000001000' is not Unix seco"):
        read_events(path)


def test_an_id_longer_than_the_contract_allows_is_refused_with_its_line(tmp_path):
    path = tmp_path / "u.data"
    path.write_text(f"1\t1\t5\t874724710\n{'u' * 257}\t2\t5\t874724711\n")
    with pytest.raises(DataFormatError, match=r"u\.data:2: an id longer than 256 characters"):
        read_events(path)


def test_a_spreadsheet_export_with_a_byte_order_mark_and_quoted_header_reads_as_ratings(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(b'\xef\xbb\xbf"userId","movieId","rating","timestamp"\r\n1,10,4.0,1700000000\r\n')
    assert [(e.viewer, e.video, e.timestamp) for e in read_events(path)] == [("1", "10", 1700000000.0)]


def test_a_gzipped_file_reads_as_the_plain_one(tmp_path):
    rows = [f"{v},{v % 7},4.0,{1700000000 + v}" for v in range(50)]
    plain = ratings_csv(tmp_path / "ratings.csv", rows)
    packed = tmp_path / "ratings.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_events(packed) == read_events(plain)
    assert len(read_events(packed)) == 50


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "ratings.dat"
    good = b"".join(b"%d::1::4::%d\n" % (n, 1700000000 + n) for n in range(5000))
    path.write_bytes(good + b"\xff7::1::4::1700009999\n")
    with pytest.raises(DataFormatError, match=r"ratings\.dat:5001: not UTF-8 text"):
        read_events(path)


def test_replay_of_a_file_the_service_would_refuse_sends_nothing_and_says_why(tmp_path, capsys):
    path = ratings_csv(tmp_path / "ratings.csv", ["1,1,4.0,1700000000000"])
    assert main(["produce", "replay", str(path), *NO_BROKER]) == 2
    err = capsys.readouterr().err
    assert "ratings.csv:2: timestamp '1700000000000' is not Unix seconds" in err
    assert "no Kafka broker" not in err and "Traceback" not in err


def test_a_loop_that_would_pass_2100_is_refused_with_how_many_passes_fit(tmp_path, capsys):
    path = tmp_path / "u.data"
    path.write_text("1\t1\t5\t874724710\n2\t2\t5\t893286638\n")  # ML-100K's first and last seconds
    assert main(["produce", "replay", str(path), "--loop", "200", *NO_BROKER]) == 2
    err = capsys.readouterr().err
    assert "--loop 200 would carry timestamps past 2100" in err and "at most 173 passes fit" in err


def test_a_loop_that_fits_is_not_refused(tmp_path, capsys):
    path = tmp_path / "u.data"
    path.write_text("1\t1\t5\t874724710\n2\t2\t5\t893286638\n")
    # It gets as far as the broker, which is not there.
    assert main(["produce", "replay", str(path), "--loop", "173", *NO_BROKER]) == 2
    assert "no Kafka broker answered" in capsys.readouterr().err


@pytest.mark.parametrize("start", ["1704067200000", "-3600", "4102444000"])
def test_synth_refuses_a_start_whose_stream_the_service_would_refuse(tmp_path, capsys, start):
    out = tmp_path / "s.jsonl"
    assert main(["produce", "synth", "--events", "3", f"--start={start}", "--output", str(out)]) == 2
    assert "within 1970..2100 in Unix seconds" in capsys.readouterr().err
    assert not out.exists()


SEND = ["produce", "send", "--viewer", "a", "--video", "b"]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["produce", "synth", "--start=nan"], "--start"),
        ([*SEND, "--timestamp", "nan"], "--timestamp"),
        ([*SEND, "--watch-time", "inf"], "--watch-time"),
        ([*SEND, "--connect-timeout", "inf"], "--connect-timeout"),
    ],
)
def test_numbers_that_are_not_finite_are_a_usage_error(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a" in err and "Traceback" not in err


def test_send_refuses_an_id_no_utf8_message_can_carry(capsys):
    # What a terminal in another encoding hands Python for a Latin-1 byte: a lone surrogate.
    assert main(["produce", "send", "--viewer", "Jos\udce9", "--video", "b", *NO_BROKER]) == 2
    err = capsys.readouterr().err
    assert "invalid event: bad_value: 'viewer' is not valid UTF-8 text" in err and "Traceback" not in err


def test_a_damaged_gzip_file_is_one_clear_error(tmp_path):
    rows = b"".join(b"%d\t%d\t5\t%d\n" % (n, n % 9, 874724710 + n) for n in range(5000))
    packed = bytearray(gzip.compress(rows))
    packed[200:260] = bytes(60)  # damage the deflate stream, not the header
    path = tmp_path / "u.data.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataFormatError, match=r"u\.data\.gz: cannot read it"):
        read_events(path)


@pytest.mark.parametrize("name", ["events.jsonl", "u.data.gz"])
def test_a_folder_holding_one_events_file_of_any_kind_is_read(tmp_path, name):
    events = [b'{"timestamp": 1700000000, "viewer": "a", "video": "x"}\n']
    rows = b"1\t10\t4\t1700000000\n"
    data = b"".join(events) if name.endswith(".jsonl") else gzip.compress(rows)
    (tmp_path / name).write_bytes(data)
    (read,) = read_events(tmp_path)
    assert read.timestamp == 1700000000.0


def test_a_folder_with_several_json_lines_files_says_which_to_choose(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text('{"timestamp": 1700000000, "viewer": "a", "video": "x"}\n')
    with pytest.raises(DataFormatError, match="2 JSON-lines files"):
        read_events(tmp_path)
