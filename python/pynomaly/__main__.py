"""``python -m pynomaly`` runs the command line (same as the ``pynomaly`` script)."""

import sys

from .cli import main

sys.exit(main())
