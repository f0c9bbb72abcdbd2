"""river's own estimator checks, run on every registered model, fresh and after learning.

``river.checks.yield_checks`` is river's battery for any estimator (repr, cloning, parameters,
pickling, the ranking routine ...); ``river.checks.check_estimator`` runs each check on a clone
of the model, as done here one test per check so a failure names it. Beyond the battery: a
model that has learned survives a pickle round trip and ``clone()`` gives a fresh model with
the same settings, since a river user pickles and clones trained models too.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
from river import checks

from model.persist import settings_of_instance
from model.registry import create, names
from tests.test_model_contract import assert_same_lists, assert_same_state, clustered_stream


@contextmanager
def _sklearn_stand_in():
    """river's check generator imports scikit-learn for its datasets, even for a ranker, which
    gets none (its datasets are for regressors and classifiers). scikit-learn is no dependency
    of ours: while the checks are listed, an empty module stands in for it."""
    if importlib.util.find_spec("sklearn") is not None:
        yield
        return
    stand_in = types.ModuleType("sklearn")
    stand_in.datasets = types.ModuleType("sklearn.datasets")
    sys.modules["sklearn"], sys.modules["sklearn.datasets"] = stand_in, stand_in.datasets
    try:
        yield
    finally:
        del sys.modules["sklearn"], sys.modules["sklearn.datasets"]


def _river_checks():
    params = []
    with _sklearn_stand_in():
        for name in names():
            model = create(name)
            for check in checks.yield_checks(model):
                params.append(pytest.param(name, check, id=f"{name}-{check.__name__}"))
    return params


@pytest.mark.parametrize("name, check", _river_checks())
def test_river_check(name, check):
    model = create(name)
    assert check.__name__ not in model._unit_test_skips(), "no model skips a river check"
    check(model.clone())


@pytest.mark.parametrize("name", names())
def test_every_model_gets_the_reco_checks(name):
    with _sklearn_stand_in():
        listed = {c.__name__ for c in checks.yield_checks(create(name))}
    assert {"check_reco_routine", "check_pickling_supports_roundtrip", "check_clone_is_idempotent"} <= listed


@pytest.fixture(scope="module")
def stream():
    return clustered_stream()


@pytest.mark.parametrize("name", names())
def test_a_trained_model_pickles_and_goes_on_exactly(name, stream):
    model = create(name)
    model.learn_many(stream[:300])
    copy = pickle.loads(pickle.dumps(model))
    viewers = sorted({e.viewer for e in stream}) + ["stranger"]
    assert_same_lists(model, copy, viewers)
    for m in (model, copy):
        m.learn_many(stream[300:])
    assert_same_state(model, copy)
    assert_same_lists(model, copy, viewers)


@pytest.mark.parametrize("name", names())
def test_clone_of_a_trained_model_is_a_fresh_one_with_the_same_settings(name, stream):
    model = create(name)
    model.learn_many(stream)
    clone = model.clone()
    assert type(clone) is type(model) and settings_of_instance(clone) == settings_of_instance(model)
    assert clone.stats()[:3] == (0, 0, 0) and clone.recommend("u0").videos == []
    clone.learn_many(stream)
    assert_same_state(clone, model)
    np.testing.assert_array_equal(clone.rank_events(stream[:50]).top, model.rank_events(stream[:50]).top)
