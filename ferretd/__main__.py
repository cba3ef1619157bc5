"""``python -m ferretd``: the daemon's command line (see :mod:`ferretd.cli`)."""

import sys

from ferretd.cli import main

sys.exit(main())
