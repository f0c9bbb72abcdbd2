"""The contract every layer of streamrec shares: the bottom of the house.

What travels between the layers and what a user sees at their edges, and nothing else:

* :mod:`contract.events`: the watch event, the one record every layer passes on;
* :mod:`contract.schema`: its JSON form on the input topic, with validation and reason codes;
* :mod:`contract.defaults`: the broker address and topic names every command starts from;
* :mod:`contract.errors`: :class:`~contract.errors.UserError`, a problem the user can fix;
* :mod:`contract.arguments`: the argparse types every command line shares;
* ``__version__``.

The layers stand on it in data-flow order: ``contract`` -> ``model`` -> ``producer``,
``consumer`` -> ``streamrec`` (the command line, the demo, the local broker, the report).
Nothing imports upwards (``tests/test_layers.py`` checks it).

Importing it makes numpy's BLAS single-threaded unless the environment says otherwise
(``OPENBLAS_NUM_THREADS`` and friends): every layer imports the contract before numpy, so the
setting is in place before numpy loads. The products on the hot path are small
((batch x k) @ (k x videos)) and OpenBLAS's worker threads spin against every other busy
thread: on a 2-core machine one (256 x 10) @ (10 x 1682) product took 15-19 ms with the
default threads and 0.14 ms with one, and the service shares its cores with the Kafka client.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
