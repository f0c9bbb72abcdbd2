"""``python -m consumer``: the same as ``streamrec serve``."""

import sys

from consumer.runner import main

sys.exit(main())
