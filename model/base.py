"""The contract every streamrec model and baseline fulfils.

A :class:`StreamRanker` is a :class:`river.reco.base.Ranker` (``learn_one``, ``predict_one``,
``rank``) with three batched paths that the evaluator and the service use:

* ``rank_events(events, n)``: the *test* step. For each event, the top-``n`` videos the model
  would have shown that viewer just before the event, and the rank of the event's video among
  them. Scoring uses the model state from before the batch; what a model can know exactly
  inside the batch (the viewer's earlier watches in it, for exclusion and history) it uses.
* ``learn_many(events)``: the *train* step, for one poll's worth of events, in order.
* ``recommend_many(viewers, n)``: fresh top-``n`` lists to publish;
* ``rank_and_learn(events, n)``: the test step then the train step on one batch, which a model
  may do in one pass (the evaluator and the service call this).

And what a service needs to run a model for months, also part of the contract so that nothing
outside ``model/`` ever probes a model's attributes:

* ``stats()``: a :class:`ModelStats` snapshot (size, memory, training totals) for the metrics;
* ``clock``: the model's event time, on which it forgets ids after ``viewer_ttl`` seconds;
* ``video_counts()``: watches per video row, for the popularity-bias metric;
* ``save(path)`` / ``load(path)``: one pickle-free file (:mod:`model.persist`), assembled from
  the parts the model lists in ``state_parts()``;
* ``viewer_states(viewers)`` / ``restore_viewers(states)``: chosen viewers' state as bytes keyed
  by video id, for the worker that takes their partition over (none by default).

Because the service runs several models side by side (a shadow baseline, A/B arms), nothing
outside ``model/`` depends on a concrete class: only on this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
from river.reco.base import Ranker

from contract.events import WatchEvent
from model.ids import IdIndex, as_id
from model.persist import Part, load_model, save_model
from model.seen import SeenVideos, viewer_keys
from model.topk import shared_top_n, shared_top_n_with_rank, top_n, top_n_with_rank

__all__ = ["StreamRanker", "CatalogueScorer", "ModelStats", "Ranking", "Recommendation", "recommendations"]


class Ranking(NamedTuple):
    """What ``rank_events`` returns for a batch of ``B`` events.

    ``top`` is ``(B, n)`` int64 of model-internal video rows (``-1`` where fewer than ``n``
    could be recommended); ``rank`` is ``(B,)`` int64, the 0-based rank of each event's video
    (:data:`model.topk.UNRANKED` when it could not be recommended); ``catalogue`` is the number
    of videos the model could recommend when it ranked the batch.
    """

    top: np.ndarray
    rank: np.ndarray
    catalogue: int


class Recommendation(NamedTuple):
    """A top-n list for one viewer: video ids and their scores, best first."""

    videos: list[str]
    scores: np.ndarray


class ModelStats(NamedTuple):
    """A snapshot of a model for the service's metrics.

    ``events_learned`` counts the events that went into the model's state; ``loss_sum`` is the
    running total of its training loss (0 for a model that has none) and ``guard_trips`` how
    often its update refused to write non-finite numbers.
    """

    events_learned: int
    viewers: int
    videos: int
    memory_bytes: int
    loss_sum: float = 0.0
    guard_trips: int = 0


class StreamRanker(Ranker, abc.ABC):
    """Base class: batched paths are abstract, river's per-event API is derived from them."""

    #: Short name used in reports, metrics labels and published messages.
    name: str = "model"
    #: Bumped by a model when the arrays its parts write change shape or meaning.
    state_version: int = 1
    #: Seconds of event time after which a viewer not seen is forgotten (``None``: never). A
    #: model with expiry takes it as a setting; the service forgets its own per-viewer
    #: bookkeeping on the same clock and TTL.
    viewer_ttl: float | None = None

    # -- what a service needs -----------------------------------------------------------------

    @abc.abstractmethod
    def stats(self) -> ModelStats:
        """Size, memory and training totals now."""

    @property
    @abc.abstractmethod
    def clock(self) -> float | None:
        """The model's event time: the newest timestamp it has learned (``None`` before any)."""

    @abc.abstractmethod
    def video_counts(self) -> np.ndarray | None:
        """Watches per video row (the rows :class:`Ranking` uses), or ``None`` if not counted."""

    @abc.abstractmethod
    def state_parts(self) -> dict[str, Part]:
        """The parts whose arrays make up the model's learned state, by name (:mod:`model.persist`)."""

    def check_state(self) -> None:
        """After loading: raise ``ValueError`` where the parts disagree (rows, references)."""

    def save(self, path: str | Path) -> None:
        """Write the whole model to one ``.npz`` file at exactly ``path`` (no pickle)."""
        save_model(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model :meth:`save` wrote; a foreign, older or damaged file raises ``ValueError``."""
        return load_model(cls, path)

    # -- the batched paths ---------------------------------------------------------------------

    @abc.abstractmethod
    def learn_many(self, events: Sequence[WatchEvent]) -> None:
        """Learn from ``events``, in order."""

    @abc.abstractmethod
    def rank_events(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """Test step: what would have been shown before each event, and where its video ranked."""

    @abc.abstractmethod
    def recommend_many(
        self, viewers: Sequence[str], n: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        """Top-``n`` for each viewer; unknown viewers get what is trending. Creates no state."""

    def rank_and_learn(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        """Test, then train, on one batch: :meth:`rank_events` from the state before the batch,
        then :meth:`learn_many`. A model whose learning step needs the very scores its test step
        computed (a softmax over the catalogue) overrides this to compute them once."""
        ranking = self.rank_events(events, n)
        self.learn_many(events)
        return ranking

    @abc.abstractmethod
    def score_videos(self, viewer: str, videos: Sequence[str]) -> np.ndarray:
        """Scores of ``videos`` for ``viewer`` (``-inf`` for unknown videos). Creates no state."""

    def watched(self, viewers: Sequence[str]) -> dict[str, list[str]]:
        """Each known viewer's watched videos, by id, in the order watched: what their lists
        leave out. Viewers it does not know are left out; a model that keeps no watched lists
        returns ``{}`` (this default)."""
        return {}

    # -- per-viewer state, for a partition that moves (issue 12) -------------------------------

    def viewer_states(self, viewers: Sequence[str]) -> dict[str, bytes]:
        """Each known viewer's whole state (history, watched videos), by video id, as bytes a
        :meth:`restore_viewers` of another instance reads; viewers it does not know are left
        out. A model without per-viewer state returns ``{}`` (this default)."""
        return {}

    def restore_viewers(self, states: Mapping[str, bytes]) -> int:
        """Install states :meth:`viewer_states` made (elsewhere), replacing what this instance
        holds for those viewers; videos it does not know are created as learning creates them.
        How many were installed (unreadable ones, of another format, are skipped)."""
        return 0

    # -- derived API -------------------------------------------------------------------------

    def recommend(self, viewer: Hashable, n: int = 10, exclude_seen: bool = True) -> Recommendation:
        """Top-``n`` videos for one viewer (implicit-style: ids and scores, best first)."""
        return self.recommend_many([as_id(viewer)], n=n, exclude_seen=exclude_seen)[0]

    def learn_one(self, user: Hashable, item: Hashable, y: float | bool = 1.0, x: dict | None = None) -> None:
        """river's API: one watch of ``item`` by ``user``.

        ``y`` is the watch time in seconds (``True``/``1.0`` for a plain positive); ``x`` may hold
        ``timestamp`` and ``duration``. A ``y`` that is false or zero is ignored: implicit
        feedback has no negative events.
        """
        if not y:
            return
        x = x or {}
        watch_time = None if isinstance(y, bool) or y == 1.0 else float(y)
        self.learn_many(
            [
                WatchEvent(
                    timestamp=float(x.get("timestamp", 0.0)),
                    viewer=as_id(user),
                    video=as_id(item),
                    watch_time=watch_time,
                    duration=x.get("duration"),
                )
            ]
        )

    def predict_one(self, user: Hashable, item: Hashable, x: dict | None = None) -> float:
        """river's API: the score of ``item`` for ``user`` (``-inf`` for an unknown item)."""
        return float(self.score_videos(as_id(user), [as_id(item)])[0])

    def rank(self, user: Hashable, items: set[Hashable], x: dict | None = None) -> list[Hashable]:
        """river's API: ``items`` by decreasing preference, scored in one vectorised call."""
        items = list(items)
        scores = self.score_videos(as_id(user), [as_id(i) for i in items])
        order = np.argsort(-scores, kind="stable")
        return [items[i] for i in order]


def recommendations(cols: np.ndarray, scores: np.ndarray, ids: Sequence[str]) -> list[Recommendation]:
    """Top-n columns and scores (from :func:`model.topk.top_n`) as lists of ids, empty slots dropped."""
    filled = (cols >= 0).sum(axis=1).tolist()  # empty slots come last
    if all(k == cols.shape[1] for k in filled):
        return [
            Recommendation([ids[c] for c in row], s) for row, s in zip(cols.tolist(), scores, strict=True)
        ]
    return [
        Recommendation([ids[c] for c in row if c >= 0], s[np.asarray(row) >= 0])
        for row, s in zip(cols.tolist(), scores, strict=True)
    ]


class CatalogueScorer(StreamRanker):
    """A model that scores viewers against its whole catalogue: the ranking paths, written once.

    A subclass keeps ``viewers`` and ``videos`` (:class:`~model.ids.IdIndex`) and ``seen``
    (:class:`~model.seen.SeenVideos`) and implements :meth:`viewer_scores`. Models whose
    viewer representation changes inside a batch (a history of recent watches) override
    :meth:`event_scores` so each event is scored with its viewer's earlier events in the batch.
    """

    viewers: IdIndex
    videos: IdIndex
    seen: SeenVideos

    @abc.abstractmethod
    def viewer_scores(self, viewer_rows: np.ndarray) -> np.ndarray:
        """``(len(viewer_rows), videos)`` float32 scores; a row of ``-1`` is an unknown viewer."""

    def shared_scores(self) -> np.ndarray | None:
        """The one score vector every viewer gets, for models that have one (popularity);
        ``None`` by default. With it, ranking reads that vector's order once per batch instead
        of a ``(batch, videos)`` matrix: the cost follows what viewers watched, not the
        catalogue."""
        return None

    def event_scores(self, events: Sequence[WatchEvent]) -> np.ndarray:
        """Scores for the test step of ``events``: by default each viewer's state before the batch."""
        return self.viewer_scores(self.viewers.get_many(e.viewer for e in events))

    def rank_events(self, events: Sequence[WatchEvent], n: int = 10) -> Ranking:
        targets = self.videos.get_many(e.video for e in events)
        exclude = self.seen.exclusion_for_events(viewer_keys(self.viewers, events), targets)
        shared = self.shared_scores()
        if shared is None:
            top, rank = top_n_with_rank(self.event_scores(events), n, targets, exclude)
        else:
            top, rank = shared_top_n_with_rank(shared, n, targets, exclude)
        return Ranking(top=top, rank=rank, catalogue=self.videos.live)

    def recommend_many(
        self, viewers: Sequence[str], n: int = 10, exclude_seen: bool = True
    ) -> list[Recommendation]:
        rows = self.viewers.get_many(viewers)
        exclude = self.seen.exclusion_for_viewers(rows.tolist()) if exclude_seen else None
        shared = self.shared_scores()
        if shared is None:
            cols, scores = top_n(self.viewer_scores(rows), n, exclude)
        else:
            cols, scores = shared_top_n(shared, n, len(rows), exclude)
        return recommendations(cols, scores, self.videos.ids)

    def watched(self, viewers: Sequence[str]) -> dict[str, list[str]]:
        """Each known viewer's seen list, by video id (released videos left out).

        >>> from contract.events import WatchEvent
        >>> from model.baselines import MostPopular
        >>> m = MostPopular(); m.learn_many([WatchEvent(1, "ann", "x"), WatchEvent(2, "ann", "y")])
        >>> m.watched(["ann", "bob"])
        {'ann': ['x', 'y']}
        """
        ids, of = self.videos.ids, self.seen.of
        rows = self.viewers.get_many(viewers).tolist()
        return {v: [ids[c] for c in of(r) if ids[c]] for v, r in zip(viewers, rows, strict=True) if r >= 0}

    def score_videos(self, viewer: str, videos: Sequence[str]) -> np.ndarray:
        cols = self.videos.get_many(videos)
        out = np.full(len(cols), -np.inf, dtype=np.float32)
        if len(self.videos):
            scores = self.viewer_scores(self.viewers.get_many([viewer]))[0]
            out[cols >= 0] = scores[cols[cols >= 0]]
        return out
