"""A stored cheat sheet together with the text of its chunk (base layer: a tensor and a string, no model).

The store returns it (:meth:`~lloco_runtime.store.CheatSheetStore.cheat_sheets` with ``with_text=True``,
:func:`~lloco_runtime.request.context_sheets`); the runtime reads it (:meth:`~lloco_runtime.LLoCO.sheet_for`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkSheet:
    """A stored cheat sheet with the text of its chunk: the context item from which a runtime with focus
    on (:attr:`lloco_runtime.LLoCO.focus`) rebuilds the sheet with literal tokens chosen for the question
    (:meth:`~lloco_runtime.encoder.ContextEncoder.focus_sheet`); read as stored otherwise."""

    sheet: torch.Tensor
    text: str

    @property
    def shape(self) -> torch.Size:
        return self.sheet.shape

    def to(self, dtype: torch.dtype) -> ChunkSheet:
        return ChunkSheet(self.sheet.to(dtype), self.text)
