"""``python -m producer ...``: the same as ``streamrec produce ...``."""

import sys

from producer.cli import main

sys.exit(main())
