"""Evaluation: ``lloco eval`` over a dataset folder in several context modes (see :mod:`.harness`).

Light at import time (no torch): the CLI registers its arguments from :mod:`.cli` while building the parser.
"""

from __future__ import annotations

__all__ = ["datasets", "harness", "metrics"]
