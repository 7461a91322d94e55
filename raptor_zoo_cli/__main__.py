"""``python -m raptor_zoo_cli ...``: the ``raptor-zoo`` command line."""
import sys

from . import main

sys.exit(main())
