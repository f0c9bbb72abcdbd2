"""``python -m consumer``: the same as ``streamrec serve``."""

import sys

import contract  # noqa: F401  (first: it sets single-threaded BLAS before numpy loads)
from consumer.runner import main

sys.exit(main())
