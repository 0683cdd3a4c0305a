"""``python -m lloco_runtime.cli ARGS`` runs ``lloco ARGS``."""

import sys

from . import main

sys.exit(main())
