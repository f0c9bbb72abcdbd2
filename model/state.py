"""Save and load an :class:`~model.embedding.EmbeddingRanker` as one ``.npz`` file, without pickle.

Everything the model needs to continue exactly where it stopped goes in the file: the
hyper-parameters, id maps, every table with its Adagrad state, recent histories, seen lists,
popularity counters, the random generator's state and the counters (events learned, guard
trips). Keys are grouped ``viewer/...`` (state that belongs to viewers, which can move with
their partition) and ``video/...`` (state shared by everyone). The file is written to a
temporary name and renamed, so a crash never leaves half a model under the real name.

A file that is not one of ours (not a zip, no format marker, another format version, missing
or malformed arrays) raises ``ValueError("<path> is not a streamrec model file: ...")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.npz import read_npz, write_npz

if TYPE_CHECKING:
    from model.embedding import EmbeddingRanker

__all__ = ["save_model", "load_model", "FORMAT"]

#: Format marker stored in every file; bump the version when the layout changes.
FORMAT = "streamrec.embedding/2"
#: Older formats still read: /1 had no expiry or admission state (nothing expired, nothing counted).
_READABLE = (FORMAT, "streamrec.embedding/1")
#: Settings added after format /1, and their values for a file that predates them (``shortlist``
#: came within /2: an older /2 file ranked the whole catalogue).
_LATER_CONFIG = {
    "viewer_ttl": None,
    "video_ttl": None,
    "expire_every": 1000,
    "min_events": 1,
    "shortlist": None,
    "shortlist_share": 0.95,
}

_CONFIG = (
    *("dim", "history", "recency", "lr", "reg", "loss", "negatives", "sampling", "viewer_vector"),
    *("init_scale", "max_grad_norm", "trending_half_life", "cooc_window", "cooc_terms"),
    *("cooc_max_videos", "cooc_weight", "cooc_half_life", "accum_decay", "trend_feature"),
    *("cooc_exponent", "seed"),
)
_VIEWER_TABLES = {"P": "_P", "P_acc": "_P_acc"}
_VIDEO_TABLES = {
    "E": "_E",
    "E_acc": "_E_acc",
    "Q": "_Q",
    "Q_acc": "_Q_acc",
    "b": "_b",
    "b_acc": "_b_acc",
    "counts": "_counts",
    "trend": "_trend",
}


def save_model(model: EmbeddingRanker, path: str | Path) -> None:
    """Write ``model`` to ``path`` (exactly that name; no ``.npz`` is appended)."""
    path = Path(path)
    counters = {
        "events_learned": model.events_learned,
        "guard_trips": model.guard_trips,
        "loss_sum": model.loss_sum,
        "trend_scale": model._trend_scale,
        "cooc_scale": model._cooc.scale,
        "version": model._version,
        "events_filtered": model.events_filtered,
    }
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "config": np.array(json.dumps({k: getattr(model, k) for k in (*_CONFIG, *_LATER_CONFIG)})),
        "counters": np.array(json.dumps(counters)),
        "rng": np.array(json.dumps(model._rng.bit_generator.state)),
        "viewer/ids": model.viewers.to_arrays()["ids"],
        "viewer/free": model.viewers.to_arrays()["free"],
        "video/free": model.videos.to_arrays()["free"],
        "viewer/seen_indptr": model.seen.to_arrays()["indptr"],
        "viewer/seen_videos": model.seen.to_arrays()["videos"],
        "viewer/history_items": model._recent.items.array,
        "viewer/history_weights": model._recent.weights.array,
        "video/ids": model.videos.to_arrays()["ids"],
        "video/cooc": model._cooc.array,
        "video/cooc_counts": model._cooc.counts,
        "video/feature_weights": np.concatenate([model._alpha, model._beta]),
        "video/feature_weights_acc": np.concatenate([model._alpha_acc, model._beta_acc]),
    }
    for key, array in model._life.to_arrays().items():
        arrays[f"lifecycle/{key}"] = array
    for side, admit in (("viewer", model._admit_viewers), ("video", model._admit_videos)):
        if admit is not None:
            for key, array in admit.to_arrays().items():
                arrays[f"{side}/admit_{key}"] = array
    for key, attr in _VIEWER_TABLES.items():
        arrays[f"viewer/{key}"] = getattr(model, attr).array
    for key, attr in _VIDEO_TABLES.items():
        arrays[f"video/{key}"] = getattr(model, attr).array
    write_npz(path, arrays)


def _not_ours(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a streamrec model file: {why}")


def load_model(cls: type[EmbeddingRanker], path: str | Path) -> EmbeddingRanker:
    """Read a model written by :func:`save_model`."""
    path = Path(path)
    arrays = read_npz(path, lambda why: _not_ours(path, why))
    if "format" not in arrays:
        raise _not_ours(path, "no format marker")
    if str(arrays["format"]) not in _READABLE:
        raise _not_ours(path, f"format {str(arrays['format'])!r}, expected {FORMAT!r}")
    try:
        return _restore(cls, arrays)
    except (KeyError, ValueError, TypeError, IndexError, json.JSONDecodeError) as err:
        raise _not_ours(path, f"damaged content ({type(err).__name__}: {err})") from None


def _restore(cls: type[EmbeddingRanker], arrays: dict[str, np.ndarray]) -> EmbeddingRanker:
    config = json.loads(str(arrays["config"]))
    model = cls(**{k: config[k] for k in _CONFIG}, **{k: config.get(k, v) for k, v in _LATER_CONFIG.items()})
    counters = json.loads(str(arrays["counters"]))
    model._rng.bit_generator.state = json.loads(str(arrays["rng"]))
    none = np.zeros(0, dtype=np.int64)
    model.viewers.load_arrays({"ids": arrays["viewer/ids"], "free": arrays.get("viewer/free", none)})
    model.videos.load_arrays({"ids": arrays["video/ids"], "free": arrays.get("video/free", none)})
    n_viewers, n_videos = len(model.viewers), len(model.videos)
    model.seen.load_arrays({"indptr": arrays["viewer/seen_indptr"], "videos": arrays["viewer/seen_videos"]})
    expected = {f"viewer/{k}": (n_viewers, attr) for k, attr in _VIEWER_TABLES.items()}
    expected |= {f"video/{k}": (n_videos, attr) for k, attr in _VIDEO_TABLES.items()}
    for key, (rows, attr) in expected.items():
        table = getattr(model, attr)
        array = arrays[key]
        if array.shape[0] != rows or array.shape[1:] != table.array.shape[1:]:
            raise ValueError(f"{key} has shape {array.shape}, expected {rows} rows")
        if not np.isfinite(array).all():
            raise ValueError(f"{key} holds non-finite numbers")
        table.load_arrays({"rows": array})
    items, weights = arrays["viewer/history_items"], arrays["viewer/history_weights"]
    if items.shape != (n_viewers, model.history) or weights.shape != items.shape:
        raise ValueError(f"history has shape {items.shape}, expected {(n_viewers, model.history)}")
    if items.size and (items.max() >= n_videos or items.min() < -1):
        raise ValueError("history refers to unknown videos")
    model._recent.load_arrays({"items": items, "weights": weights})
    if len(model.seen) > n_viewers:
        raise ValueError("seen lists for unknown viewers")
    model.events_learned = int(counters["events_learned"])
    model.guard_trips = int(counters["guard_trips"])
    model.loss_sum = float(counters["loss_sum"])
    model._trend_scale = float(counters["trend_scale"])
    model._cooc.load_arrays(
        {
            "pairs": arrays["video/cooc"],
            "counts": arrays["video/cooc_counts"],
            "scale": np.array(counters["cooc_scale"]),
        }
    )
    if model._cooc.rows not in (0, n_videos):
        raise ValueError(f"co-occurrence covers {model._cooc.rows} videos, expected {n_videos}")
    weights, acc = arrays["video/feature_weights"], arrays["video/feature_weights_acc"]
    if weights.shape != (2,) or acc.shape != (2,) or not np.isfinite(weights).all():
        raise ValueError("malformed feature weights")
    model._alpha[:], model._beta[:] = weights[:1], weights[1:]
    model._alpha_acc[:], model._beta_acc[:] = acc[:1], acc[1:]
    model._version = int(counters["version"])
    model.events_filtered = int(counters.get("events_filtered", 0))
    if "lifecycle/counters" in arrays:
        model._life.load_arrays(
            {k.removeprefix("lifecycle/"): v for k, v in arrays.items() if k.startswith("lifecycle/")}
        )
        for last_seen, rows in ((model._life.viewers, n_viewers), (model._life.videos, n_videos)):
            if last_seen.table.rows > rows:
                raise ValueError("last-seen times for unknown rows")
    for side, admit in (("viewer", model._admit_viewers), ("video", model._admit_videos)):
        if admit is not None and f"{side}/admit_sketch" in arrays:
            admit.load_arrays({k: arrays[f"{side}/admit_{k}"] for k in ("sketch", "since_decay")})
    return model
