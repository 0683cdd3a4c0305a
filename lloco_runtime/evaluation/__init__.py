"""Evaluation: ``lloco eval`` over a dataset folder in several context modes.

Running (the modes, the loop over questions, the per-mode reports) is :mod:`.harness`; reporting (the
tables, summary lines and plots made from those reports, and the confidence intervals of
``lloco eval-report``) is :mod:`.report`; :mod:`.datasets` reads the dataset folders and :mod:`.metrics`
scores answers. The command line is :mod:`lloco_runtime.cli.evaluation`.
"""

from __future__ import annotations

__all__ = ["datasets", "harness", "metrics", "report"]
