"""Download MovieLens from GroupLens into a local cache: the project itself ships no data.

MovieLens may not be redistributed, so users fetch it themselves::

    streamrec data fetch movielens-100k      # prints the path of u.data

An archive is downloaded once into the cache folder (``~/.cache/streamrec`` unless
``$STREAMREC_CACHE`` or ``--cache-dir`` says otherwise), written to a ``.part`` file and
renamed only when complete, checked against the MD5 GroupLens publishes next to it (the
``ml-latest-small`` archive changes with each refresh, so it has no pinned checksum), tested
as a zip, unpacked, and deleted. A later fetch finds the unpacked ratings file and downloads
nothing.

>>> sorted(DATASETS)[:2]
['movielens-100k', 'movielens-10m']
>>> DATASETS["movielens-100k"].ratings
'ml-100k/u.data'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Dataset", "DATASETS", "FetchError", "fetch", "default_cache_dir", "LICENCE_NOTE"]

_BASE = "https://files.grouplens.org/datasets/movielens/"

LICENCE_NOTE = (
    "MovieLens data is provided by GroupLens Research for research use under their terms: "
    "no redistribution (do not commit or share the files), no commercial use without permission, "
    "and cite F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
    "Context. ACM TiiS 5, 4: 19. See the README inside the archive."
)


@dataclass(frozen=True)
class Dataset:
    """One GroupLens archive: where it lives, its checksum, and the ratings file inside it."""

    name: str
    url: str
    #: MD5 of the archive as GroupLens publishes it (``<url>.md5``); None when it changes over time.
    md5: str | None
    #: Path of the ratings file inside the archive (and under the cache folder once unpacked).
    ratings: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "movielens-100k", _BASE + "ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", "ml-100k/u.data"
        ),
        Dataset("movielens-1m", _BASE + "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", "ml-1m/ratings.dat"),
        Dataset(
            "movielens-10m",
            _BASE + "ml-10m.zip",
            "ce571fd55effeba0271552578f2648bd",
            "ml-10M100K/ratings.dat",
        ),
        Dataset(
            "movielens-25m", _BASE + "ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m/ratings.csv"
        ),
        Dataset("movielens-latest-small", _BASE + "ml-latest-small.zip", None, "ml-latest-small/ratings.csv"),
    )
}


class FetchError(RuntimeError):
    """A download that cannot be completed or verified; the message says why in one line."""


def default_cache_dir() -> Path:
    """``$STREAMREC_CACHE`` if set, else ``$XDG_CACHE_HOME/streamrec``, else ``~/.cache/streamrec``."""
    if os.environ.get("STREAMREC_CACHE"):
        return Path(os.environ["STREAMREC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "streamrec"


def _download(
    url: str, target: Path, timeout_s: float, progress: Callable[[int, int | None], None] | None
) -> str:
    """Stream ``url`` into ``target`` (via ``target.part``); returns the MD5 of what was written."""
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "streamrec-data-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, part.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise FetchError(f"download of {url} stopped after {done} of {total} bytes; try again")
    except urllib.error.HTTPError as err:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise FetchError(
            f"cannot download {url} ({reason}); offline? Unpack a copy of the archive into "
            f"{target.parent}, or pass --url file:///path/to/{target.name}"
        ) from None
    except ValueError as err:  # not a URL urllib can open
        part.unlink(missing_ok=True)
        raise FetchError(f"cannot download {url!r}: {err}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(target)
    return digest.hexdigest()


def _unpack(archive: Path, folder: Path, ratings: str) -> Path:
    """Test and unpack ``archive`` into ``folder``; returns the ratings file."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise FetchError(f"{archive}: damaged member {bad}; delete it and fetch again")
            names = set(zf.namelist())
            if ratings not in names:
                raise FetchError(f"{archive}: no {ratings} inside; is it the right archive?")
            root = folder.resolve()
            for name in names:  # refuse members that would land outside the cache (zip slip)
                if not (folder / name).resolve().is_relative_to(root):
                    raise FetchError(f"{archive}: member {name!r} points outside the cache folder")
            zf.extractall(folder)
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive}: not a valid zip archive ({err}); delete it and fetch again") from None
    return folder / ratings


def fetch(
    dataset: Dataset | str,
    cache_dir: str | Path | None = None,
    *,
    url: str | None = None,
    timeout_s: float = 60.0,
    force: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Make sure ``dataset`` is downloaded, verified and unpacked in the cache; return its ratings file.

    ``url`` replaces GroupLens's address (a mirror, a local copy); the pinned checksum is then
    not applied, since a mirror may repackage, but the archive is still tested as a zip.
    ``force`` downloads again even when the files are there.
    """
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise FetchError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
        dataset = DATASETS[dataset]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    ratings = folder / dataset.ratings
    if ratings.is_file() and not force:
        return ratings
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchError(f"cannot create the cache folder {folder}: {err.strerror}") from None

    source = url or dataset.url
    archive = folder / Path(source.split("?")[0]).name
    if not archive.name.endswith(".zip"):
        archive = folder / f"{dataset.name}.zip"
    md5 = _download(source, archive, timeout_s, progress)
    expected = dataset.md5 if url is None else None
    if expected is not None and md5 != expected:
        archive.unlink(missing_ok=True)
        raise FetchError(
            f"{source}: MD5 {md5} does not match the published {expected}; the file was deleted "
            "(a truncated download or a changed archive: try again, or pass --url to accept another copy)"
        )
    # Unpacked beside the cache's copy and swapped in only once it is whole: a bad archive
    # (with --force) leaves the copy that worked.
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder))
    try:
        _unpack(archive, staging, dataset.ratings)
        top = dataset.ratings.split("/")[0]
        old = folder / f".replaced-{top}"
        shutil.rmtree(old, ignore_errors=True)
        if (folder / top).exists():
            (folder / top).rename(old)
        (staging / top).rename(folder / top)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)  # unpacked or unusable: either way not needed again
    return ratings


def print_progress(done: int, total: int | None, stream=sys.stderr) -> None:
    """A download progress line on stderr (used when stderr is a terminal)."""
    mb = done / 1e6
    text = f"\r{mb:,.1f} MB" + (f" of {total / 1e6:,.1f} MB ({done / total:.0%})" if total else "")
    stream.write(text)
    stream.flush()
