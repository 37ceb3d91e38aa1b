"""``python -m pynomaly.cli`` runs the command line (same as the ``pynomaly`` script)."""

import sys

from pynomaly.cli import main

sys.exit(main())
