"""``python -m bmd`` is the ``bmd`` command."""

import sys

from bmd.cli import main

sys.exit(main())
