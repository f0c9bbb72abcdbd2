"""streamrec's learning core: id tables, embeddings, SGD updates, top-n and the streaming evaluator.

Imports numpy, the standard library and river only: never Kafka or Prometheus.
"""

from contract.events import WatchEvent
from model.base import Ranking, Recommendation, StreamRanker
from model.evaluate import EvalReport, StreamingEvaluator, evaluate, progressive_evaluate

__all__ = [
    "EvalReport",
    "Ranking",
    "Recommendation",
    "StreamRanker",
    "StreamingEvaluator",
    "WatchEvent",
    "evaluate",
    "progressive_evaluate",
]
