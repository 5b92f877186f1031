"""``python -m zchunk``."""

import sys

from zchunk.cli import main

sys.exit(main())
