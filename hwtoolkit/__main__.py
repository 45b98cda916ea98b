"""``python -m hwtoolkit`` runs the command line."""

import sys

from hwtoolkit.cli import main

sys.exit(main())
