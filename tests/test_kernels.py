"""Each compiled kernel (model.compiled) against its plain numpy reference (model.kernels), on
random inputs: ties, -inf, NaN and +inf cells, exclusions, empty batches, rows with fewer than n
cells, n = 0. Equal to float rounding (the kernels sum in their own order); selections and
ranks exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import compiled, kernels
from model.cooc import CoCounts
from model.history import group_positions
from model.seen import SeenVideos

ROOT = Path(__file__).resolve().parents[1]


def _exclusions(rng: np.random.Generator, batch: int, videos: int, share: float):
    """Compressed exclusion rows over ``videos`` (repeats and out-of-range rows included)."""
    lengths = rng.binomial(videos, share, batch)
    ptr = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    return ptr, rng.integers(-1, videos + 2, int(ptr[-1]))


@st.composite
def score_cases(draw):
    batch = draw(st.sampled_from([0, 1, 3, 17]))
    cols = draw(st.sampled_from([1, 5, 16, 17, 40, 300]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([3, 1000]))  # few levels: ties everywhere
    scores = (rng.integers(0, levels, (batch, cols)) / 7).astype(np.float32)
    special = rng.random((batch, cols))
    scores[special < draw(st.sampled_from([0.0, 0.05]))] = np.nan
    scores[(special > 0.9) & (special < 0.93)] = np.inf
    scores[special > draw(st.sampled_from([0.97, 0.5]))] = -np.inf
    mapped = draw(st.booleans())
    videos = cols + 3 if mapped else cols
    column_of = (
        rng.permutation(np.r_[np.arange(cols), -np.ones(3, np.int64)]) if mapped else compiled.NO_COLUMNS
    )
    ex_ptr, ex_videos = _exclusions(rng, batch, videos, draw(st.sampled_from([0.0, 0.2, 0.9])))
    targets = rng.integers(-1, cols, batch)
    width = draw(st.sampled_from([cols, max(0, cols - 4), 0]))
    n = draw(st.sampled_from([0, 1, 10, 64]))
    finish = draw(st.sampled_from(["none", "bias", "feature", "both"]))
    bias = rng.standard_normal(cols).astype(np.float32) if finish in ("bias", "both") else compiled.NO_BIAS
    feature = (
        rng.random((batch, cols)).astype(np.float32) if finish in ("feature", "both") else compiled.NO_FEATURE
    )
    return scores, width, n, targets, ex_ptr, ex_videos, column_of, bias, np.float32(0.5), feature


@settings(max_examples=300, deadline=None)
@given(score_cases(), st.booleans())
def test_rank_top_n_is_a_stable_sort_with_pessimistic_ranks(case, keep_targets):
    scores, *rest = case
    ours, theirs = scores.copy(), scores.copy()
    with np.errstate(invalid="ignore"):
        want = kernels.rank_top_n(theirs, *rest, keep_targets)
    got = compiled.rank_top_n(ours, *rest, keep_targets)
    for a, b, name in zip(got, want, ("top", "best", "rank"), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(ours, theirs)  # the finished, masked scores alike


@st.composite
def softmax_cases(draw):
    batch = draw(st.sampled_from([0, 1, 4, 33]))
    cols = draw(st.sampled_from([1, 7, 64, 1100]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = (rng.standard_normal((batch, cols)) * draw(st.sampled_from([1.0, 30.0]))).astype(np.float32)
    logits[rng.random((batch, cols)) < 0.2] = -np.inf
    if batch and draw(st.booleans()):  # a diverged row or two
        logits[rng.integers(0, batch), rng.integers(0, cols)] = draw(st.sampled_from([np.nan, np.inf]))
    targets = rng.integers(0, cols, batch)
    if batch and draw(st.booleans()):
        logits[0, targets[0]] = -np.inf  # a target that is not finite
    weights = rng.uniform(0.1, 1.0, batch).astype(np.float32)
    ex_ptr, ex_videos = _exclusions(rng, batch, cols, draw(st.sampled_from([0.0, 0.3])))
    feature = rng.random((batch, cols)).astype(np.float32) if draw(st.booleans()) else compiled.NO_FEATURE
    return logits, targets, weights, ex_ptr, ex_videos, compiled.NO_COLUMNS, feature


@settings(max_examples=200, deadline=None)
@given(softmax_cases())
def test_softmax_grad_matches_numpy(case):
    logits, *rest = case
    ours, theirs = logits.copy(), logits.copy()
    loss, skipped, sums, feature_grad = compiled.softmax_grad(ours, *rest)
    want_loss, want_skipped, want_sums, want_feature = kernels.softmax_step(theirs, *rest)
    assert skipped == want_skipped
    # The target cell is p * w - w: where p is near 1 its error is an ulp of w, not of the cell.
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=3e-7)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-4, atol=1e-6)
    assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert feature_grad == pytest.approx(want_feature, rel=1e-4, abs=1e-5)
    assert np.isfinite(ours).all()


def test_exp_is_within_two_ulp_of_numpy_and_exactly_zero_at_minus_inf():
    x = np.r_[-np.inf, np.linspace(-86.9, 0.0, 200_001)].astype(np.float32)
    ours, theirs = compiled.exp_shifted(x, 0.0), np.exp(x)
    assert ours[0] == 0.0 and ours[-1] == 1.0
    ulp = np.spacing(theirs[1:])
    assert np.abs(ours[1:] - theirs[1:]).max() <= 2 * ulp.max()
    assert (np.abs(ours[1:] - theirs[1:]) <= 2 * ulp).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 5, 40]), st.booleans())
def test_adagrad_rows_matches_numpy(seed, n, whole):
    rng = np.random.default_rng(seed)
    rows_total = max(n, 1) + 5
    param = rng.standard_normal((rows_total, 8)).astype(np.float32)
    accum = rng.random((rows_total, 8)).astype(np.float32)
    n = rows_total if whole else n
    rows = np.arange(rows_total) if whole else rng.choice(rows_total, n, replace=False)
    grad = (rng.standard_normal((n, 8)) * rng.choice([0.1, 1.0, 50.0], (n, 1))).astype(np.float32)
    if n > 1:
        grad[0, 3] = np.nan  # refused
        grad[1] = 1e30  # clipped, finite
    p1, a1, p2, a2 = param.copy(), accum.copy(), param.copy(), accum.copy()
    got = compiled.adagrad_rows(p1, a1, compiled.NO_COLUMNS if whole else rows, grad, 0.15, 10.0)
    with np.errstate(all="ignore"):
        want = kernels.adagrad_step(p2, a2, None if whole else rows, grad, 0.15, 10.0)
    assert got == want
    np.testing.assert_allclose(p1, p2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a1, a2, rtol=1e-6, atol=1e-7)


def _histories(rng: np.random.Generator, batch: int, length: int, videos: int):
    items = rng.integers(-1, videos, (batch, length))
    items[rng.random(batch) < 0.2] = -1  # empty histories
    return items, rng.random((batch, length)).astype(np.float32)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 9, 64]), st.sampled_from([1, 4, 20]))
def test_mix_histories_and_history_grad_match_numpy(seed, batch, length):
    rng = np.random.default_rng(seed)
    videos = 30
    items, hist_w = _histories(rng, batch, length, videos)
    decay = (0.8 ** np.arange(length)).astype(np.float32)
    Q = rng.standard_normal((videos, 6)).astype(np.float32)
    known = 25  # rows 25.. are new: their vectors do not count yet
    mix, U, rows, slot = compiled.mix_histories(items, hist_w, decay, Q, known, videos)
    want_mix, want_U, want_rows, want_slot = kernels.mix_histories(items, hist_w, decay, Q, known, videos)
    np.testing.assert_allclose(mix, want_mix, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(U, want_U, rtol=1e-5, atol=1e-6)
    assert sorted(rows.tolist()) == want_rows.tolist()
    held = np.full(items.shape, -1, dtype=np.int64)
    held[slot >= 0] = rows[slot[slot >= 0]]
    np.testing.assert_array_equal(held, items)
    grad_u = rng.standard_normal((batch, 6)).astype(np.float32)
    got = compiled.history_grad(slot, mix, grad_u, rows.size)
    want = kernels.history_grad(want_slot, want_mix, grad_u, want_rows.size)
    np.testing.assert_allclose(got[np.argsort(rows)], want, rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7, 80]), st.sampled_from([1, 3, 20]))
def test_batch_histories_match_numpy(seed, batch, length):
    rng = np.random.default_rng(seed)
    stored = 6
    stored_items, stored_w = _histories(rng, stored, length, 50)
    viewers = rng.integers(0, stored + 3, batch)  # rows past the stored ones start empty
    videos = rng.integers(0, 50, batch)
    weights = rng.random(batch).astype(np.float32)
    order, start, _ = group_positions(viewers)
    got = compiled.batch_histories(stored_items, stored_w, viewers, videos, weights, order, start)
    want = kernels.batch_histories(stored_items, stored_w, viewers, videos, weights, order, start)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 30]), st.sampled_from([1, 12]))
def test_cooc_feature_matches_numpy(seed, batch, terms):
    rng = np.random.default_rng(seed)
    counts = CoCounts(capacity=8)
    counts.add(rng.integers(-1, 40, (200, 5)), rng.integers(0, 40, 200), window=5)
    items, mix = _histories(rng, batch, 20, 45)  # rows 40.. have no counts yet
    columns = rng.permutation(48)[:30]
    got = counts.features(items, mix, terms, 0.45, columns)
    want = counts.feature(items[:, :terms], mix[:, :terms], 48, 0.45, columns=columns)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 9, 60]))
def test_exclusion_cells_are_the_causal_exclusions(seed, batch):
    rng = np.random.default_rng(seed)
    seen = SeenVideos()
    for viewer, video in zip(rng.integers(0, 6, 40).tolist(), rng.integers(0, 30, 40).tolist(), strict=True):
        seen.add(viewer, video)
    keys = rng.integers(-3, 8, batch)  # negative: viewers not known yet; 6, 7: no list
    videos = rng.integers(-1, 30, batch)
    ptr, cells = seen.exclusions(keys, videos)
    rows, cols = kernels.exclusion_for_events(seen._seen, keys, videos)
    got_rows, got_cols = seen.exclusion_for_events(keys, videos)
    for i in range(batch):
        want = sorted(cols[rows == i].tolist())
        assert sorted(v for v in cells[ptr[i] : ptr[i + 1]].tolist() if v >= 0) == want
        assert sorted(got_cols[got_rows == i].tolist()) == want


@pytest.mark.parametrize("seed", range(6))
def test_excluded_targets_finds_the_re_watches(seed):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 60))
    ptr = np.zeros(batch + 1, dtype=np.int64)
    np.cumsum(rng.integers(0, 12, batch), out=ptr[1:])
    videos = rng.integers(-1, 20, ptr[-1])
    targets = rng.integers(-1, 20, batch)
    got = compiled.excluded_targets(ptr, videos, targets)
    want = kernels.excluded_targets(ptr, videos, targets)
    assert got.tolist() == want.tolist()
    rows = [videos[ptr[i] : ptr[i + 1]].tolist() for i in range(batch)]
    assert got.tolist() == [t >= 0 and t in row for t, row in zip(targets.tolist(), rows, strict=True)]


def _run_a_copy(tmp_path: Path, env: dict[str, str]) -> tuple[Path, subprocess.CompletedProcess]:
    """Rank one row with a fresh copy of model/ (no cache beside it) in a new interpreter."""
    copy = tmp_path / "install"
    for package in ("model", "contract"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import numpy as np; from model import compiled as c;"
        "s = np.array([[1, 3, 2]], np.float32);"
        "print(c.JIT_OPTIONS['cache'], c.rank_top_n(s, 3, 2, np.array([2]), np.zeros(2, np.int64),"
        " c.NO_COLUMNS, c.NO_COLUMNS, c.NO_BIAS, np.float32(0), c.NO_FEATURE, False)[0].tolist())"
    )
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"} | env
    return copy, subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True
    )


def test_numba_cache_dir_takes_the_compiled_kernels(tmp_path):
    """Where the install cannot be written (a read-only site-packages), NUMBA_CACHE_DIR (or the
    user's cache directory) takes the cache: here it is set, and it comes first."""
    cache = tmp_path / "cache"
    copy, out = _run_a_copy(tmp_path, {"NUMBA_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[[1,", "2]]"]
    assert not list((copy / "model").rglob("*.nbi"))
    assert list(cache.rglob("*rank_top_n*.nbi"))


def test_with_nowhere_to_cache_the_kernels_still_compile_and_run(tmp_path):
    """numba's own search finds no place (as with a read-only install and no writable home):
    model.compiled imports without caching instead of failing with "no locator available"."""
    copy, out = _run_a_copy(tmp_path, {"NUMBA_CACHE_LOCATOR_CLASSES": "numba.core.caching.ZipCacheLocator"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "[[1,", "2]]"]
    assert not list(copy.rglob("*.nbi"))


@settings(max_examples=100, deadline=None)
@given(softmax_cases(), st.sampled_from([0, 1, 5]), st.integers(0, 2**32 - 1))
def test_rank_softmax_is_rank_top_n_then_softmax_grad_exactly(case, n, seed):
    """The fused pass does the same arithmetic in the same order: bit-identical results."""
    logits, learn_targets, weights, ex_ptr, ex_videos, column_of, feature = case
    rng = np.random.default_rng(seed)
    cols = logits.shape[1]
    width = int(rng.integers(0, cols + 1))
    rank_targets = np.where(learn_targets < width, learn_targets, -1)
    bias = rng.standard_normal(cols).astype(np.float32)
    alpha = np.float32(0.3)
    ours, theirs = logits.copy(), logits.copy()
    fused = compiled.rank_softmax(
        ours,
        width,
        n,
        rank_targets,
        learn_targets,
        weights,
        ex_ptr,
        ex_videos,
        column_of,
        bias,
        alpha,
        feature,
    )
    ranked = compiled.rank_top_n(
        theirs, width, n, rank_targets, ex_ptr, ex_videos, column_of, bias, alpha, feature, True
    )
    learned = compiled.softmax_grad(theirs, learn_targets, weights, ex_ptr, ex_videos, column_of, feature)
    for a, b in zip(fused, (*ranked, *learned), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours, theirs)


@st.composite
def shared_cases(draw):
    """One shared score vector (ties, -inf, NaN, +inf), a batch's targets and excluded cells
    (repeats, targets excluded, rows that exclude much of the catalogue)."""
    items = draw(st.sampled_from([0, 1, 7, 64, 500]))
    batch = draw(st.sampled_from([0, 1, 9, 40]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.sampled_from([2, 50, 10**6]))
    scores = (rng.integers(0, levels, items) / 3).astype(np.float32)
    special = rng.random(items)
    scores[special < draw(st.sampled_from([0.0, 0.1]))] = -np.inf
    scores[(special > 0.5) & (special < 0.5 + draw(st.sampled_from([0.0, 0.05])))] = np.nan
    scores[(special > 0.6) & (special < 0.6 + draw(st.sampled_from([0.0, 0.05])))] = np.inf
    targets = rng.integers(-1, max(items, 1), batch) if items else np.full(batch, -1)
    share = draw(st.sampled_from([0.0, 0.1, 0.9]))
    counts = rng.binomial(items, share, batch) if items else np.zeros(batch, dtype=np.int64)
    rows = np.repeat(np.arange(batch), counts)
    cols = rng.integers(0, max(items, 1), rows.size) if items else np.zeros(0, dtype=np.int64)
    if rows.size and draw(st.booleans()):  # some rows exclude their own target
        hit = rng.random(batch) < 0.3
        rows = np.r_[rows, np.flatnonzero(hit & (targets >= 0))]
        cols = np.r_[cols, targets[hit & (targets >= 0)]]
    order = rng.permutation(rows.size)  # cells in any order
    n = draw(st.sampled_from([0, 1, 10, 64]))
    return scores, n, targets.astype(np.int64), (rows[order].astype(np.int64), cols[order].astype(np.int64))


@settings(max_examples=300, deadline=None)
@given(shared_cases())
def test_shared_top_n_rank_matches_numpy(case):
    """The popularity baselines' ranking (model.topk through the kernel) against the numpy
    code it replaced: the same lists and ranks, exactly."""
    from model.topk import shared_top_n, shared_top_n_with_rank

    scores, n, targets, exclude = case
    with np.errstate(invalid="ignore"):
        want_top, want_rank = kernels.shared_top_n_with_rank(scores.copy(), n, targets, exclude)
    top, rank = shared_top_n_with_rank(scores.copy(), n, targets, exclude)
    np.testing.assert_array_equal(top, want_top)
    np.testing.assert_array_equal(rank, want_rank)
    cols, best = shared_top_n(scores.copy(), n, len(targets), exclude)
    np.testing.assert_array_equal(cols, want_top)
    clean = np.where(np.isfinite(scores), scores, -np.inf).astype(np.float32)
    chosen = clean[np.maximum(cols, 0)] if clean.size else np.zeros(cols.shape, np.float32)
    np.testing.assert_array_equal(best, np.where(cols >= 0, chosen, -np.inf))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 9, 60]), st.sampled_from([0, 3, 10]))
def test_shared_ranking_reads_the_exclusions_compressed_as_they_come(seed, batch, n):
    """SeenVideos.exclusion_for_events' cells carry their compressed rows (unknown videos as -1):
    ranking from those is ranking from the cells."""
    from model.topk import shared_top_n_with_rank

    rng = np.random.default_rng(seed)
    seen = SeenVideos()
    for viewer, video in zip(rng.integers(0, 6, 80).tolist(), rng.integers(0, 30, 80).tolist(), strict=True):
        seen.add(viewer, video)
    keys, videos = rng.integers(-3, 8, batch), rng.integers(-1, 30, batch)
    cells = seen.exclusion_for_events(keys, videos)
    assert cells.compressed is not None
    scores = (rng.integers(0, 6, 30) / 2).astype(np.float32)
    plain = (np.asarray(cells[0]), np.asarray(cells[1]))
    with np.errstate(invalid="ignore"):
        want = kernels.shared_top_n_with_rank(scores.copy(), n, videos, plain)
    for got in (
        shared_top_n_with_rank(scores.copy(), n, videos, cells),
        shared_top_n_with_rank(scores.copy(), n, videos, plain),
    ):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 7, 60]), st.sampled_from([np.int8, np.int16]))
def test_quantized_step_matches_numpy_exactly(seed, n, kind):
    """The same integers, scales and rows as the numpy reference, bit for bit: a peer adds the
    reference's product to its rows, and replicas must hold the same numbers."""
    rng = np.random.default_rng(seed)
    total = n + 5
    rows = rng.choice(total, n, replace=False)
    delta = (rng.standard_normal((n, 16)) * rng.lognormal(0, 6, (n, 1))).astype(np.float32)
    if n > 1:
        delta[0] = 0.0  # scale 0
        delta[1, 3] = -np.abs(delta[1]).max() * 2  # the peak negative
    param = rng.standard_normal((total, 16)).astype(np.float32)
    agreed = rng.standard_normal((total, 16)).astype(np.float32)
    q, scale = np.empty((n, 16), kind), np.empty(n, np.float32)
    p1, a1 = param.copy(), agreed.copy()
    compiled.quantized_step(delta, np.iinfo(kind).max, q, scale, p1, a1, rows)
    want_q, want_scale = kernels.quantize_rows(delta, kind)
    np.testing.assert_array_equal(q, want_q)
    np.testing.assert_array_equal(scale, want_scale)
    want = agreed.copy()
    want[rows] = agreed[rows] + kernels.dequantize_rows(want_q, want_scale)
    np.testing.assert_array_equal(a1, want)
    np.testing.assert_array_equal(p1[rows], want[rows])
    untouched = np.setdiff1d(np.arange(total), rows)
    np.testing.assert_array_equal(p1[untouched], param[untouched])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 9, 40]), st.sampled_from([np.float32, np.float64]))
def test_adding_a_peers_rows_matches_numpy_exactly(seed, n, kind):
    """A peer's change of a table, added to the model's rows and the agreed copy: bit for bit
    numpy's, for vector tables and 1-D ones (biases, counts), the untouched rows untouched."""
    rng = np.random.default_rng(seed)
    total = n + 7
    rows = rng.choice(total, n, replace=False)
    for shape in ((total, 8), (total,)):
        param = (rng.standard_normal(shape) * 1e3).astype(kind)
        agreed = (rng.standard_normal(shape) * 1e-3).astype(kind)
        values = rng.standard_normal((n, *shape[1:])).astype(np.float32)
        want_param, want_agreed = param.copy(), agreed.copy()
        kernels.add_rows_both(want_param, want_agreed, rows, values)
        add = compiled.add_rows_both if len(shape) == 2 else compiled.add_rows_both_1d
        add(param, agreed, rows, values)
        np.testing.assert_array_equal(param, want_param)
        np.testing.assert_array_equal(agreed, want_agreed)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1), st.sampled_from([2, 5, 30]), st.sampled_from([np.float32, np.uint8, np.uint16])
)
def test_adding_a_peers_pairs_matches_numpy_exactly(seed, size, counts_kind):
    """Co-occurrence pairs (each unordered pair once, i != j, counts as they travel: float32 or
    the smallest integer type), added both ways into a strided view of the counts buffer."""
    rng = np.random.default_rng(seed)
    upper = np.argwhere(np.triu(np.ones((size, size), dtype=bool), 1))
    chosen = upper[rng.permutation(len(upper))[: rng.integers(0, len(upper) + 1)]]
    i, j = chosen[:, 0].astype(np.int64), chosen[:, 1].astype(np.int64)
    counts = rng.integers(1, 200, i.size).astype(counts_kind)
    buffer = (rng.random((size + 3, size + 3)) * 1e4).astype(np.float32)
    want = buffer.copy()
    kernels.add_pairs_both_ways(want[:size, :size], i, j, counts)
    compiled.add_pairs_both_ways(buffer[:size, :size], i, j, counts)
    np.testing.assert_array_equal(buffer, want)


def test_warm_up_readies_every_kernel_the_models_batch_path_calls():
    """A kernel left out of ``warm_up`` compiles, or loads from the cache, in the first batch
    a worker serves (a re-watch judge added to the shortlist once was): every kernel the
    default model and its parts import is ready after ``warm_up`` in a fresh interpreter."""
    code = (
        "import numba, model.embedding, model.cooc, model.seen, model.history, model.topk\n"
        "from model import compiled\n"
        "compiled.warm_up()\n"
        "used = {n for m in (model.embedding, model.cooc, model.seen, model.history, model.topk)\n"
        "        for n, f in vars(m).items() if isinstance(f, numba.core.registry.CPUDispatcher)}\n"
        "print(sorted(n for n in used if not getattr(compiled, n).signatures))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
