"""``python -m hpcai.teach export-nbgrader SRC DST``."""
import sys

from . import main

sys.exit(main())
