"""``streamrec data fetch``: download, verify, unpack and cache, against a local HTTP server.

The archives are built here from made-up ratings; nothing touches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.readers import read_events
from streamrec.cli import main
from streamrec.datasets import DATASETS, Dataset, FetchError, fetch

RATINGS = "".join(
    f"{u}\t{i}\t{1 + (u + i) % 5}\t{881250949 + 60 * n}\n"
    for n, (u, i) in enumerate([(1, 10), (2, 10), (1, 20), (3, 30), (2, 20)])
)


def build_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


class Server:
    """A real HTTP server on 127.0.0.1 serving one folder, counting the requests it answers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    folder = tmp_path / "www"
    folder.mkdir()
    build_zip(folder / "ml-100k.zip", {"ml-100k/u.data": RATINGS, "ml-100k/README": "made up for a test\n"})
    build_zip(folder / "ml-test.zip", {"ml-test/u.data": RATINGS})
    (folder / "not-a-zip.zip").write_bytes(b"<html>a captive portal page</html>")
    build_zip(folder / "wrong.zip", {"something/else.txt": "hello"})
    srv = Server(folder)
    yield srv
    srv.close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_cli_fetch_prints_the_ratings_path_and_the_licence(server, tmp_path, capsys):
    cache = tmp_path / "cache"
    code = main(
        ["data", "fetch", "movielens-100k", "--cache-dir", str(cache), "--url", server.url + "/ml-100k.zip"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    path = Path(out.strip())
    assert path == cache / "ml-100k" / "u.data"
    assert [(e.viewer, e.video) for e in read_events(path)] == [
        ("1", "10"),
        ("2", "10"),
        ("1", "20"),
        ("3", "30"),
        ("2", "20"),
    ]
    assert "no redistribution" in err and "Harper" in err
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no archive or .part left behind


def test_a_second_fetch_uses_the_cache_and_force_downloads_again(server, tmp_path):
    spec = Dataset("movielens-test", server.url + "/ml-test.zip", None, "ml-test/u.data")
    first = fetch(spec, tmp_path)
    assert fetch(spec, tmp_path) == first
    assert len(server.requests) == 1
    fetch(spec, tmp_path, force=True)
    assert len(server.requests) == 2


def test_the_published_checksum_is_enforced(server, tmp_path):
    good = Dataset(
        "movielens-test", server.url + "/ml-test.zip", md5(server.folder / "ml-test.zip"), "ml-test/u.data"
    )
    assert fetch(good, tmp_path / "a").read_text() == RATINGS

    tampered = Dataset("movielens-test", server.url + "/ml-test.zip", "0" * 32, "ml-test/u.data")
    with pytest.raises(FetchError, match="MD5 .* does not match"):
        fetch(tampered, tmp_path / "b")
    assert list((tmp_path / "b").iterdir()) == []  # nothing half-trusted stays in the cache


@pytest.mark.parametrize(
    "name, message",
    [
        ("not-a-zip.zip", "not a valid zip"),
        ("wrong.zip", "no ml-test/u.data inside"),
        ("missing.zip", "HTTP 404"),
    ],
)
def test_unusable_downloads_fail_clearly_and_leave_nothing(server, tmp_path, name, message):
    spec = Dataset("movielens-test", server.url + "/" + name, None, "ml-test/u.data")
    with pytest.raises(FetchError, match=message):
        fetch(spec, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_forced_fetch_of_a_bad_archive_keeps_the_copy_that_worked(server, tmp_path):
    cache = tmp_path / "cache"
    good = Dataset("movielens-test", server.url + "/ml-test.zip", None, "ml-test/u.data")
    ratings = fetch(good, cache)
    before = ratings.read_bytes()
    bad = Dataset("movielens-test", server.url + "/wrong.zip", None, "ml-test/u.data")
    with pytest.raises(FetchError, match="no ml-test/u.data inside"):
        fetch(bad, cache, force=True)
    assert ratings.read_bytes() == before
    assert sorted(p.name for p in cache.iterdir()) == ["ml-test"]  # no staging left behind


def test_offline_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as s:  # a port that nothing listens on: what an offline machine sees
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        [
            "data",
            "fetch",
            "movielens-1m",
            "--cache-dir",
            str(tmp_path),
            "--url",
            f"http://127.0.0.1:{port}/ml-1m.zip",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "cannot download" in err and "offline?" in err and "Traceback" not in err


def test_a_local_copy_can_be_given_as_a_file_url(server, tmp_path):
    path = fetch("movielens-100k", tmp_path, url=(server.folder / "ml-100k.zip").as_uri())
    assert path.read_text() == RATINGS
    assert server.requests == []


def test_every_known_data_set_is_an_https_grouplens_zip():
    for spec in DATASETS.values():
        assert spec.url.startswith("https://files.grouplens.org/datasets/movielens/")
        assert spec.url.endswith(".zip")
        assert spec.md5 is None or len(spec.md5) == 32
    assert DATASETS["movielens-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
