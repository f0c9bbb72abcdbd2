"""streamrec: a streaming, online-learning recommender on Kafka.

The packages follow the data flow: ``producer`` (event sources and the Kafka sink) ->
Kafka -> ``consumer`` (the service) -> ``model`` (the learning core) -> Kafka + ``/metrics``.
This package holds what they share: the wire schema and the command line.

Importing it first makes numpy's BLAS single-threaded unless the environment says otherwise
(``OPENBLAS_NUM_THREADS`` and friends). The products on the hot path are small
((batch x k) @ (k x videos)) and OpenBLAS's worker threads spin against every other busy
thread: on a 2-core machine one (256 x 10) @ (10 x 1682) product took 15-19 ms with the
default threads and 0.14 ms with one, and the service shares its cores with the Kafka client.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
