import sys

from streamrec.cli import main

sys.exit(main())
