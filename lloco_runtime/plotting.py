"""matplotlib on demand: plots are optional (the ``[plot]`` extra), everything else works without them."""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import ConfigError

INSTALL_HINT = "pip install 'lloco[plot]'"


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend; ConfigError with the install command without it."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            f"plots need matplotlib, which is in lloco's [plot] extra: {INSTALL_HINT} "
            "(or leave out the plot option)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
