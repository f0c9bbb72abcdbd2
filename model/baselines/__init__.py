"""Baselines evaluated beside the main model, under the same contract and the same evaluator."""

from model.baselines.popular import MostPopular

__all__ = ["MostPopular"]
