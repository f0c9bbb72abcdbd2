"""Baselines evaluated beside the main model, under the same contract and the same evaluator."""

from model.baselines.cooccurrence import CoOccurrenceKNN
from model.baselines.funk_mf import FunkMFRanker
from model.baselines.isgd import ISGD
from model.baselines.popular import MostPopular
from model.baselines.recent_popular import RecentPopular

__all__ = ["CoOccurrenceKNN", "FunkMFRanker", "ISGD", "MostPopular", "RecentPopular"]
