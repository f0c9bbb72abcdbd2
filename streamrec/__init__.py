"""streamrec: a streaming, online-learning recommender on Kafka.

The packages follow the data flow: ``producer`` (event sources and the Kafka sink) ->
Kafka -> ``consumer`` (the service) -> ``model`` (the learning core) -> Kafka + ``/metrics``.
This package holds what they share: the wire schema and the command line.
"""

__version__ = "0.1.0"
