"""The learned literal-token selector (a linear scorer on a decoder layer's hidden states, fitted on which
tokens questions ask about) and strict_ratio (short segments never compress less than the encoder's ratio)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from lloco_runtime import ConfigError, ContextEncoder, EncoderConfig
from lloco_runtime.errors import ModelLoadError

TEXT = (
    "The canal was opened in 1794 by the engineer Margaret Eddowes of Marrick, and the canal company "
    "paid her 300 pounds. Later the trust restored it. The engineer Margaret Eddowes also built the "
    "aqueduct over the River Brindle, which was later widened by the county to carry the heavier boats "
    "of the coal trade."
)


def _enc(host, **kw):
    cfg = {
        "segment_length": 64,
        "summary_length": 8,
        "literal_tokens": 8,
        "pooling": "mean",
        "summary_layer": 0,
        "connector": "mlp",
        "literal_selector": "learned",
        "selector_layer": 1,
    }
    return ContextEncoder(host, EncoderConfig(**{**cfg, **kw}))


def _ids(host, n=64):
    return host.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:n]


def test_config_is_checked_and_defaults_keep_old_fingerprints():
    with pytest.raises(ConfigError, match="literal_tokens > 0"):
        EncoderConfig(pooling="mean", literal_selector="learned", selector_layer=2)
    with pytest.raises(ConfigError, match="selector_layer >= 1"):
        EncoderConfig(pooling="mean", literal_tokens=4, literal_selector="learned")
    with pytest.raises(ConfigError, match="literal_selector must be one of"):
        EncoderConfig(pooling="mean", literal_tokens=4, literal_selector="magic")
    with pytest.raises(ConfigError, match="keep_ratio"):
        EncoderConfig(pooling="mean", strict_ratio=True)
    d = EncoderConfig(pooling="mean", literal_tokens=4).to_dict()
    assert not {"literal_selector", "selector_layer", "strict_ratio"} & set(d)
    d = EncoderConfig(
        pooling="mean",
        literal_tokens=4,
        literal_selector="learned",
        selector_layer=3,
        keep_ratio=True,
        strict_ratio=True,
    ).to_dict()
    assert (d["literal_selector"], d["selector_layer"], d["strict_ratio"]) == ("learned", 3, True)


def test_selector_layer_beyond_the_model_is_refused(tiny_host):
    with pytest.raises(ConfigError, match="selector_layer 9"):
        _enc(tiny_host, selector_layer=9)


def test_selector_states_stop_at_the_layer_and_ignore_padding(tiny_host):
    enc = _enc(tiny_host, selector_layer=1)
    a, b = _ids(tiny_host, 40), _ids(tiny_host, 64)
    got = enc.selector_states([a, b])
    with torch.no_grad():
        for ids, h in zip([a, b], got, strict=True):
            ref = tiny_host.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1][
                0
            ]
            assert h.shape == ref.shape
            torch.testing.assert_close(h, ref, atol=1e-4, rtol=1e-4)


def test_learned_positions_follow_the_scores_whole_words_once(tiny_host):
    enc = _enc(tiny_host)
    ids = _ids(tiny_host)
    pieces = [tiny_host.tokenizer.decode([i]) for i in ids]
    starts = [p for p, t in enumerate(pieces) if p == 0 or t[:1].isspace()] + [len(ids)]
    words = {"".join(pieces[a:b]).strip(): list(range(a, b)) for a, b in itertools.pairwise(starts)}
    multi = next(
        w for w, pos in words.items() if len(pos) > 1 and w[:1].islower()
    )  # a word of several tokens
    scores = torch.zeros(len(ids))
    scores[words[multi]] = 5.0  # its tokens score best: the whole word is kept
    scores[[p for p, t in enumerate(pieces) if t.strip() == "Margaret"]] = 3.0  # both mentions
    keep = enc.literal_positions(ids, scores)
    assert len(keep) == 8 and keep == sorted(set(keep))
    assert set(words[multi]) <= set(keep)
    kept = tiny_host.tokenizer.decode([ids[i] for i in keep])
    assert kept.count("Margaret") == 1  # the second mention is not kept again
    with pytest.raises(Exception, match="selector scores"):
        enc.literal_positions(ids, scores[:5])


def test_selector_weights_travel_with_the_folder_and_change_the_fingerprint(tiny_host, tmp_path):
    enc = _enc(tiny_host)
    before = enc.fingerprint
    with torch.no_grad():
        enc.selector.weight.normal_()
    enc.invalidate_fingerprint()
    assert enc.fingerprint != before
    enc.save(tmp_path / "e")
    loaded = ContextEncoder.load(tmp_path / "e", tiny_host)
    assert loaded.fingerprint == enc.fingerprint
    assert torch.equal(loaded.selector.weight, enc.selector.weight)
    ids = _ids(tiny_host)
    assert torch.equal(enc.summarize_list([ids])[0], loaded.summarize_list([ids])[0])
    # a folder whose config names a learned selector but whose weights lack it is refused clearly
    from safetensors.torch import load_file, save_file

    w = load_file(str(tmp_path / "e" / "encoder.safetensors"))
    save_file(
        {k: v for k, v in w.items() if not k.startswith("selector.")},
        str(tmp_path / "e" / "encoder.safetensors"),
    )
    with pytest.raises(ModelLoadError, match="no selector weights"):
        ContextEncoder.load(tmp_path / "e", tiny_host)


def test_strict_ratio_never_compresses_a_tail_less_than_the_ratio(tiny_host):
    enc = _enc(tiny_host, literal_selector="rules", selector_layer=0, keep_ratio=True, strict_ratio=True)
    loose = _enc(tiny_host, literal_selector="rules", selector_layer=0, keep_ratio=True)
    ids = _ids(tiny_host)
    for n in range(1, 65):
        rows = enc.summarize_list([ids[:n]])[0].shape[0]
        assert rows <= max(1, n * 16 // 64), n
        assert rows >= 1
    assert enc.summarize_list([ids])[0].shape[0] == 16  # a full segment is unchanged
    assert sum(loose.summarize_list([ids[:n]])[0].shape[0] for n in range(1, 64)) > sum(
        enc.summarize_list([ids[:n]])[0].shape[0] for n in range(1, 64)
    )


def test_reconfigure_drops_the_reader_and_checks_changes(tiny_host):
    enc = _enc(tiny_host, literal_selector="rules", selector_layer=0, keep_ratio=True)
    enc.reader = b"tied to the old fingerprint"
    fp = enc.fingerprint
    enc.reconfigure(literal_selector="learned", selector_layer=2)
    assert enc.selector is not None and enc.reader is None and enc.fingerprint != fp
    with pytest.raises(ConfigError, match="cannot change segment_length"):
        enc.reconfigure(segment_length=32)
    with pytest.raises(ConfigError, match="selector_layer 7"):
        enc.reconfigure(selector_layer=7)


def _squad_folder(path, n_articles=6):
    path.mkdir()
    paras, qa = [], []
    names = [
        "Margaret Eddowes",
        "Tomas Brindle",
        "Ada Marrick",
        "Owen Calder",
        "Ruth Pellow",
        "Ivo Tarrant",
        "Nell Sorby",
        "Abel Crane",
    ]
    for a in range(n_articles):
        for p in range(4):
            name = names[(a + p) % len(names)]
            year = 1700 + 13 * a + p
            ctx = (
                f"The canal of district {a}-{p} was opened in {year} by the engineer {name}, and the company "
                f"paid the builder for the work on the locks. Later the trust restored it and the boats "
                f"carried coal along the valley for many years."
            )
            paras.append({"doc_id": f"art{a}", "paragraph_index": p, "context": ctx})
            qa.append(
                {
                    "doc_id": f"art{a}",
                    "paragraph_index": p,
                    "question": "Who built the canal?",
                    "answers": [name],
                }
            )
            qa.append(
                {
                    "doc_id": f"art{a}",
                    "paragraph_index": p,
                    "question": "When was it opened?",
                    "answers": [str(year)],
                }
            )
    (path / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in paras))
    (path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    return path


def test_train_selector_fits_answer_tokens_and_reports_against_the_rules(tiny_host, tmp_path):
    from lloco_runtime.training.selector import SelectorConfig, train_selector

    folder = _squad_folder(tmp_path / "squad")
    enc = _enc(tiny_host, segment_length=64, summary_length=8, literal_tokens=4)
    fp = enc.fingerprint
    m = train_selector(
        enc, folder, SelectorConfig(paragraphs=16, val_articles=2, epochs=150, l2=0.0), progress=False
    )
    assert enc.fingerprint != fp and float(enc.selector.weight.abs().sum()) > 0
    assert m["held_out_bce"] < m["held_out_bce_constant"]  # it learned something about answer tokens
    assert 0 <= m["kept_whole_rules"] <= 1 and 0 <= m["kept_whole_learned"] <= 1
    assert m["tokens"] > 0 and m["paragraphs"] == 16
    rules = _enc(tiny_host, literal_selector="rules", selector_layer=0)
    with pytest.raises(ConfigError, match="rules"):
        train_selector(rules, folder, progress=False)
