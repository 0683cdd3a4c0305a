"""matplotlib is optional (the [plot] extra): asked-for plots say how to get it, training never fails for it."""

from __future__ import annotations

import sys

import pytest

from lloco_runtime import ConfigError
from lloco_runtime.plotting import available, pyplot
from lloco_runtime.training.common import plot_curves


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError


def test_pyplot_names_the_extra(no_matplotlib):
    assert not available()
    with pytest.raises(ConfigError, match=r"lloco\[plot\]"):
        pyplot()


def test_loss_curves_are_skipped_without_matplotlib(no_matplotlib, tmp_path):
    plot_curves(tmp_path / "loss.png", [(0, 2.0), (1, 1.5)], {"val": [(1, 1.7)]}, "t")
    assert not (tmp_path / "loss.png").exists()


def test_loss_curves_are_written_with_matplotlib(tmp_path):
    assert available()
    plot_curves(tmp_path / "loss.png", [(0, 2.0), (1, 1.5)], {"val": [(1, 1.7)]}, "t")
    assert (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv", [["bench", "--quick", "--plot", "x.png"], ["eval", "DATA", "--plot", "x.png"]]
)
def test_cli_plot_fails_before_any_work(no_matplotlib, argv, capsys, tmp_path, monkeypatch):
    from lloco_runtime.cli import main

    data = tmp_path / "data"  # a dataset folder that is never read: the plot check comes first
    data.mkdir()
    (data / "documents.jsonl").write_text('{"doc_id": "d", "text": "Some text."}\n')
    (data / "questions.jsonl").write_text('{"doc_id": "d", "qid": "1", "question": "q?", "answers": ["a"]}\n')
    monkeypatch.chdir(tmp_path)
    assert main([str(data) if a == "DATA" else a for a in argv]) != 0
    assert "lloco[plot]" in capsys.readouterr().err
