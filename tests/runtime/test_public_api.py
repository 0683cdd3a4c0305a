"""The core's public names: ``__all__`` lists exactly the lazily exported names, and each one resolves."""

from __future__ import annotations

import lloco_runtime


def test_all_is_the_export_table():
    assert lloco_runtime.__all__ == sorted(lloco_runtime._EXPORTS)


def test_every_public_name_resolves():
    for name in lloco_runtime.__all__:
        assert getattr(lloco_runtime, name).__name__ == name
