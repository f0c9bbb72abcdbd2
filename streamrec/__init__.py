"""streamrec: a streaming, online-learning recommender on Kafka.

The packages follow the data flow: ``producer`` (event sources and the Kafka sink) ->
Kafka -> ``consumer`` (the service) -> ``model`` (the learning core) -> Kafka + ``/metrics``,
all standing on ``contract`` (the watch event, its schema, the defaults, the user error).
This package is the top floor: the command line, the demo, the local broker helper and the
report. Nothing below imports it.
"""

from contract import __version__

__all__ = ["__version__"]
