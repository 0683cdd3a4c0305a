"""PEFT LoRA folders in and out of the store: `lloco adapters import/export/delete/deactivate`.

Real embedded Postgres (a fresh schema per test), tiny random Llamas, adapter folders written by peft's own
``save_pretrained``; the CLI runs through ``lloco_runtime.cli.main`` as the store CLI tests do.
"""

from __future__ import annotations

import json
import pickle
import shutil
import uuid
from pathlib import Path

import pytest
import torch
from lloco_test_support import HashingEmbedder
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from lloco_runtime.adapters import CONTEXT_LORA_FIELDS, AdapterArtifact
from lloco_runtime.cli import main
from lloco_runtime.errors import AdapterError
from lloco_runtime.peft_io import export_peft_folder, import_peft_folder
from lloco_runtime.service import LLoCOService
from lloco_runtime.store import CheatSheetStore, DocumentInput

DOCS = {
    "harbour": "The harbour master counted forty boats before the storm. The lighthouse keeper, Ada Brill, "
    "rang the bell at dusk so the fishing fleet could find the narrow channel.",
    "canal": "The Vell Canal runs thirty-one miles between two market towns. Its trust was founded by the "
    "engineer Tomas Reed, who also built the Harrow Hill Tunnel.",
}
IDS = torch.tensor([[1, 450, 17, 2001, 99, 5123, 8, 311, 42, 77]])


@pytest.fixture
def lloco(tiny_lloco):
    return tiny_lloco


@pytest.fixture
def store(pg_url, lloco):
    """A fresh schema with the two documents ingested into default/g by the runtime's encoder."""
    s = CheatSheetStore(pg_url, schema="t_" + uuid.uuid4().hex[:10], embedder=HashingEmbedder())
    s.ingest([DocumentInput(doc_id=k, text=v) for k, v in DOCS.items()], group="g", encoder=lloco.encoder)
    yield s
    s.drop_schema()
    s.close()


@pytest.fixture
def cli(pg_url, store, lloco, monkeypatch, capsys):
    """``cli(*argv) -> (exit code, stdout, stderr)`` on the test's schema, with the tiny runtime as default."""
    import lloco_runtime.cli._common as cli_common
    import lloco_runtime.store.store as store_mod
    from lloco_runtime import runtime

    monkeypatch.setattr(store_mod, "default_embedder", lambda: store.embedder)
    monkeypatch.setattr(runtime, "load_default_runtime", lambda: lloco)
    monkeypatch.setattr(cli_common, "load_runtime", lambda args: lloco)  # `lloco ask`

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--url", pg_url, "--schema", store.schema])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def n_adapters(store) -> int:
    from sqlalchemy import func, select

    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(store.tables.adapters)).scalar_one()


def randomise_lora(model: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """A fresh LoRA is the identity (B = 0): give A and B random values so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def peft_folder(
    base_dir: Path, out: Path, *, seed: int = 1, safe: bool = True, **lora
) -> tuple[Path, torch.Tensor]:
    """A PEFT LoRA folder written by peft's own ``save_pretrained`` on the model in ``base_dir``; and the
    logits that peft's model gives on ``IDS`` (the reference lloco must reproduce)."""
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    kw = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM", **lora}
    pm = get_peft_model(base, LoraConfig(**kw))
    randomise_lora(pm, seed)
    pm.eval()
    with torch.no_grad():
        logits = pm(IDS).logits
    pm.save_pretrained(out, safe_serialization=safe)
    return out, logits


def lloco_logits(lloco, adapter_id) -> torch.Tensor:
    """Logits on ``IDS`` with a stored adapter applied the way lloco applies it when answering."""
    with lloco.adapters.acquire(str(adapter_id)) as name, lloco.host.using(name) as model, torch.no_grad():
        return model(IDS).logits


def base_logits(lloco) -> torch.Tensor:
    with lloco.host.using(None) as model, torch.no_grad():
        return model(IDS).logits


# -- import ---------------------------------------------------------------------------------------------------


def test_import_peft_save_pretrained_folder_applies_and_answers(cli, store, lloco, tiny_model_dir, tmp_path):
    folder, reference = peft_folder(tiny_model_dir, tmp_path / "peft")
    assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    code, out, err = cli("adapters", "import", str(folder), "--group", "g", "--activate")
    assert code == 0, err
    assert "imported" in out and "active" in out
    (info,) = store.list_adapters("g")
    assert info.active and info.version == 1 and info.config["r"] == 4
    assert (
        info.base_fingerprint == lloco.host.fingerprint
        and info.encoder_fingerprint == lloco.encoder.fingerprint
    )
    assert store.get_group("g").active_adapter_id == info.id

    service = LLoCOService(lloco, store)
    got = lloco_logits(lloco, info.id)
    assert torch.allclose(got, reference, atol=1e-4), (got - reference).abs().max()
    assert not torch.allclose(
        base_logits(lloco), reference, atol=1e-2
    )  # the adapter really changes the output

    question = "Who rang the bell at dusk?"
    with_adapter = service.answer(question, group="g", max_new_tokens=8)
    without = service.answer(question, group="g", max_new_tokens=8, use_adapter=False)
    assert with_adapter.adapter_id == info.id and without.adapter_id is None
    assert with_adapter.answer != without.answer
    code, out, err = cli("ask", question, "--group", "g", "--json", "--max-new-tokens", "8")
    assert code == 0, err
    asked = json.loads(out)
    assert asked["adapter_id"] == info.id and asked["answer"] == with_adapter.answer


def test_import_bin_via_weights_only(cli, store, lloco, tiny_model_dir, tmp_path):
    folder, reference = peft_folder(
        tiny_model_dir,
        tmp_path / "peft-bin",
        seed=5,
        safe=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    assert (folder / "adapter_model.bin").is_file() and not (folder / "adapter_model.safetensors").exists()
    code, out, err = cli("adapters", "import", str(folder), "--group", "g")
    assert code == 0, err
    assert "not active" in out
    (info,) = store.list_adapters("g")
    assert not info.active and store.get_group("g").active_adapter_id is None
    LLoCOService(lloco, store)
    assert torch.allclose(lloco_logits(lloco, info.id), reference, atol=1e-4)


class _Payload:
    """A pickle that creates ``marker`` when unpickled (as any unrestricted ``torch.load`` would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("layout", ["torch.save", "raw pickle"])
def test_malicious_bin_is_refused_without_running(cli, store, tiny_model_dir, tmp_path, layout):
    good, _ = peft_folder(tiny_model_dir, tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(good / "adapter_config.json", bad / "adapter_config.json")
    marker = tmp_path / "marker"
    if layout == "torch.save":
        torch.save(
            {
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
                "x": _Payload(marker),
            },
            bad / "adapter_model.bin",
        )
    else:
        (bad / "adapter_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    # The payload is live: plain unpickling of the same bytes with another marker does run it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))
    assert proof.exists()

    code, _, err = cli("adapters", "import", str(bad), "--group", "g", "--activate")
    assert code == 1
    assert "refused to load" in err and "weights_only=True" in err and "safetensors" in err
    assert not marker.exists()
    assert n_adapters(store) == 0


# -- refusals -------------------------------------------------------------------------------------------------


def test_wrong_hidden_size_refused(cli, store, lloco, tiny_llama_factory, tmp_path):
    wide = tiny_llama_factory(tmp_path / "wide", hidden_size=128, intermediate_size=256)
    folder, _ = peft_folder(wide, tmp_path / "peft-wide")
    # base_model_name_or_path names a local folder: its config is compared with the loaded decoder
    code, _, err = cli("adapters", "import", str(folder), "--group", "g")
    assert code == 1 and "hidden_size 128" in err and "hidden_size 64" in err and "--model" in err
    # without it, the weights' shapes tell
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    code, _, err = cli("adapters", "import", str(folder), "--group", "g")
    assert code == 1 and "hidden size 128" in err and "hidden size 64" in err
    assert n_adapters(store) == 0


def test_wrong_layer_count_refused(lloco, tiny_llama_factory, tmp_path):
    deep = tiny_llama_factory(tmp_path / "deep", num_hidden_layers=4)
    folder, _ = peft_folder(deep, tmp_path / "peft-deep")
    with pytest.raises(AdapterError, match="num_hidden_layers 4"):
        import_peft_folder(folder, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some-hub/model-not-on-this-machine"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match=r"layer 3 \(at least 4 layers\).* has 2 layers"):
        import_peft_folder(folder, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
    assert lloco.host.adapter_names() == []  # the scratch check adapter never stays behind


def test_missing_target_modules_refused(cli, store, tmp_path):
    folder = tmp_path / "neox"
    LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM").save_pretrained(
        folder
    )
    save_file(
        {
            "base_model.model.gpt_neox.layers.0.attention.query_key_value.lora_A.weight": torch.zeros(4, 64),
            "base_model.model.gpt_neox.layers.0.attention.query_key_value.lora_B.weight": torch.zeros(192, 4),
        },
        str(folder / "adapter_model.safetensors"),
    )
    code, _, err = cli("adapters", "import", str(folder), "--group", "g")
    assert code == 1
    assert "['query_key_value']" in err and "q_proj" in err and "another architecture" in err
    assert n_adapters(store) == 0


def test_missing_config_and_unknown_group_and_unsupported_features(cli, store, tiny_model_dir, tmp_path):
    good, _ = peft_folder(tiny_model_dir, tmp_path / "good")
    no_cfg = tmp_path / "no-config"
    no_cfg.mkdir()
    shutil.copy(good / "adapter_model.safetensors", no_cfg / "adapter_model.safetensors")
    code, _, err = cli("adapters", "import", str(no_cfg), "--group", "g")
    assert code == 1 and "no adapter_config.json" in err and "adapter_model.safetensors" in err
    assert "save_pretrained" in err

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(good / "adapter_config.json", no_weights / "adapter_config.json")
    code, _, err = cli("adapters", "import", str(no_weights), "--group", "g")
    assert code == 1 and "neither adapter_model.safetensors nor adapter_model.bin" in err

    code, _, err = cli("adapters", "import", str(tmp_path / "nowhere"), "--group", "g")
    assert code == 2 and "is not a folder" in err

    code, _, err = cli("adapters", "import", str(good), "--group", "nope")
    assert code == 1 and "group 'nope' does not exist" in err

    dora, _ = peft_folder(tiny_model_dir, tmp_path / "dora", use_dora=True)
    code, _, err = cli("adapters", "import", str(dora), "--group", "g")
    assert code == 1 and "use_dora=True" in err

    cfg = json.loads((good / "adapter_config.json").read_text())
    (good / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "IA3"}))
    code, _, err = cli("adapters", "import", str(good), "--group", "g")
    assert code == 1 and "LoRA adapters only" in err
    assert n_adapters(store) == 0 and [g.name for g in store.list_groups()] == ["g"]


def test_import_keeps_the_whole_lora_config(cli, store, lloco, tiny_model_dir, tmp_path):
    """Options beyond rank, alpha and targets (per-module rank and alpha, some layers only, rsLoRA) are kept in
    the artifact with the rest of peft's config, and lloco applies them as peft does."""
    folder, reference = peft_folder(
        tiny_model_dir,
        tmp_path / "peft-patterns",
        seed=6,
        target_modules=["q_proj", "v_proj", "o_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"o_proj": 32},
        layers_to_transform=[0],
        use_rslora=True,
    )
    code, _, err = cli("adapters", "import", str(folder), "--group", "g")
    assert code == 0, err
    (info,) = store.list_adapters("g")
    cfg = AdapterArtifact.from_bytes(store.adapter_weights(info.id)).lora_config
    assert set(cfg) == set(LoraConfig().to_dict()) - CONTEXT_LORA_FIELDS
    assert cfg["target_modules"] == ["o_proj", "q_proj", "v_proj"] and cfg["layers_to_transform"] == [0]
    assert (
        cfg["rank_pattern"] == {"v_proj": 2} and cfg["alpha_pattern"] == {"o_proj": 32} and cfg["use_rslora"]
    )
    LLoCOService(lloco, store)  # the runtime's adapters come from this store
    got = lloco_logits(lloco, info.id)
    assert torch.allclose(got, reference, atol=1e-4), (got - reference).abs().max()
    assert not torch.allclose(base_logits(lloco), reference, atol=1e-2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("modules_to_save", ["lm_head"]),
        ("layer_replication", [[0, 1]]),
        ("trainable_token_indices", [5, 6]),
        ("use_dora", True),
    ],
)
def test_lora_options_lloco_cannot_apply_are_refused_by_name(lloco, tiny_model_dir, tmp_path, option, value):
    folder, _ = peft_folder(tiny_model_dir, tmp_path / "peft")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, option: value}))
    with pytest.raises(AdapterError, match="LoRA features lloco cannot apply") as exc:
        import_peft_folder(folder, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
    assert f"{option}=" in str(exc.value)
    assert lloco.host.adapter_names() == []


def test_shape_mismatch_against_config_refused(lloco, tiny_model_dir, tmp_path):
    folder, _ = peft_folder(tiny_model_dir, tmp_path / "peft")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))  # the weights have rank 4
    with pytest.raises(AdapterError, match=r"makes it \[8, 64\]"):
        import_peft_folder(folder, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
    assert lloco.host.adapter_names() == []


# -- export ---------------------------------------------------------------------------------------------------


def make_artifact(lloco, seed: int, targets=("q_proj", "k_proj", "v_proj", "o_proj")) -> AdapterArtifact:
    """A LoRA trained "here": injected in lloco's host, randomised, captured as lloco captures adapters."""
    host, name = lloco.host, f"scratch_{seed}"
    host.add_adapter(name, LoraConfig(r=4, lora_alpha=16, target_modules=list(targets), lora_dropout=0.05))
    randomise_lora(host.model, seed)
    art = AdapterArtifact.from_model(
        host.model,
        name,
        base_fingerprint=host.fingerprint,
        encoder_fingerprint=lloco.encoder.fingerprint,
        info={"seed": seed},
    )
    host.delete_adapter(name)
    return art


def register(store, art: AdapterArtifact, *, activate: bool = False):
    return store.register_adapter(
        "g",
        art.to_bytes(),
        base_fingerprint=art.base_fingerprint,
        encoder_fingerprint=art.encoder_fingerprint,
        config=art.lora_config,
        activate=activate,
    )


def test_export_loads_in_peft_and_imports_back(cli, store, lloco, tiny_model_dir, tmp_path):
    art = make_artifact(lloco, seed=3)
    info = register(store, art, activate=True)
    LLoCOService(lloco, store)
    ours = lloco_logits(lloco, info.id)

    out = tmp_path / "exported"
    code, stdout, err = cli("adapters", "export", str(info.id), str(out), "--base-model", str(tiny_model_dir))
    assert code == 0, err
    assert "PEFT LoRA folder" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4
    assert cfg["lora_alpha"] == 16 and sorted(cfg["target_modules"]) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    assert set(cfg) >= set(LoraConfig().to_dict()) - {"runtime_config"}  # peft's own serialisation

    base = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, out)
    pm.eval()
    with torch.no_grad():
        theirs = pm(IDS).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(base_logits(lloco), theirs, atol=1e-2)

    code, _, err = cli("adapters", "export", str(info.id), str(out))
    assert code == 2 and "not an empty folder" in err
    code, _, err = cli("adapters", "export", "987654", str(tmp_path / "x"))
    assert code == 1 and "does not exist" in err and not (tmp_path / "x").exists()

    code, _, err = cli("adapters", "import", str(out), "--group", "g")
    assert code == 0, err
    back = store.list_adapters("g")[-1]
    assert back.version == 2 and not back.active
    again = AdapterArtifact.from_bytes(store.adapter_weights(back.id))
    assert again.digest == art.digest and again.lora_config == art.lora_config
    assert torch.allclose(lloco_logits(lloco, back.id), ours, atol=1e-6)


def test_exported_folder_records_fingerprints(lloco, tmp_path):
    art = make_artifact(lloco, seed=4, targets=("q_proj", "v_proj"))
    folder = export_peft_folder(art, tmp_path / "exp")
    with pytest.raises(Exception, match="encoder") as exc:
        import_peft_folder(folder, lloco.host, encoder_fingerprint="f" * 64)
    assert "was exported by lloco" in str(exc.value)
    back = import_peft_folder(folder, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
    assert back.digest == art.digest


# -- delete / deactivate ----------------------------------------------------------------------------------------


def test_delete_and_deactivate(cli, store, lloco):
    a1 = register(store, make_artifact(lloco, seed=11, targets=("q_proj",)))
    a2 = register(store, make_artifact(lloco, seed=12, targets=("q_proj",)), activate=True)
    assert store.get_group("g").active_adapter_id == a2.id

    code, out, err = cli("adapters", "deactivate", "--group", "g")
    assert code == 0, err
    assert f"adapter {a2.id} stays stored" in out
    assert store.get_group("g").active_adapter_id is None
    assert [a.id for a in store.list_adapters("g")] == [a1.id, a2.id]
    code, out, _ = cli("adapters", "deactivate", "--group", "g")
    assert code == 0 and "it had none" in out
    code, _, err = cli("adapters", "deactivate", "--group", "nope")
    assert code == 1 and "does not exist" in err

    code, _, _ = cli("adapters", "activate", str(a1.id))
    assert code == 0 and store.get_group("g").active_adapter_id == a1.id
    code, out, err = cli("adapters", "delete", str(a2.id))  # not the active one: the group keeps a1
    assert code == 0, err
    assert f"deleted adapter {a2.id}" in out and "no active adapter" not in out
    assert store.get_group("g").active_adapter_id == a1.id
    code, out, err = cli("adapters", "delete", str(a1.id))  # the active one: the group is left with none
    assert code == 0, err
    assert "the group now has no active adapter" in out
    assert store.get_group("g").active_adapter_id is None and store.list_adapters("g") == []
    code, _, err = cli("adapters", "delete", str(a1.id))
    assert code == 1 and "does not exist" in err

    code, out, _ = cli("groups", "list", "--json")
    assert json.loads(out)[0]["active_adapter_id"] is None
    # Answering after the delete uses no adapter (no dangling id)
    answer = LLoCOService(lloco, store).answer("Who founded the trust?", group="g", max_new_tokens=4)
    assert answer.adapter_id is None
    # A later registration is stored and activated as usual
    a3 = register(store, make_artifact(lloco, seed=13, targets=("q_proj",)), activate=True)
    assert store.get_group("g").active_adapter_id == a3.id
