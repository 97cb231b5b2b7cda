"""``python -m qmprr.cli``: the ``qmprr`` command."""

import sys

from . import main

sys.exit(main())
