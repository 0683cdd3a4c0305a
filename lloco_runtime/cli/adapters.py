"""``lloco adapters list|activate|deactivate|delete|export|import``: a group's stored LoRA adapters, and PEFT
folders in and out."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from . import _common
from ._common import add_collection_option, add_db_options, add_model_options, open_store, print_json


def cmd_adapters_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        adapters = store.list_adapters(args.group, args.collection)
    if args.json:
        print_json([asdict(a) for a in adapters])
        return 0
    for a in adapters:
        print(
            f"{a.id}: v{a.version}{' (active)' if a.active else ''}, {a.n_bytes:,} bytes, "
            f"metrics {json.dumps(a.metrics)}"
        )
    return 0


def cmd_adapters_activate(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        a = store.activate_adapter(args.adapter_id)
    print(f"adapter {a.id} (v{a.version}) is now active for {a.collection}/{a.group}")
    return 0


def cmd_adapters_deactivate(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        previous = store.deactivate_adapter(args.group, args.collection)
    was = f"adapter {previous} stays stored" if previous is not None else "it had none"
    print(
        f"{args.collection}/{args.group} now has no active adapter ({was}; `lloco adapters activate ID` "
        "turns one on again)"
    )
    return 0


def cmd_adapters_delete(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        a = store.delete_adapter(args.adapter_id)
    print(
        f"deleted adapter {a.id} (v{a.version} of {a.collection}/{a.group})"
        + ("; the group now has no active adapter" if a.active else "")
    )
    return 0


def cmd_adapters_export(args: argparse.Namespace) -> int:
    from ..adapters import AdapterArtifact
    from ..peft_io import SAFETENSORS_NAME, export_peft_folder

    with open_store(args) as store:
        a = store.get_adapter(args.adapter_id)
        data = store.adapter_weights(args.adapter_id)
    art = AdapterArtifact.from_bytes(data)
    out = export_peft_folder(
        art,
        args.dir,
        base_model_name_or_path=args.base_model,
        extra_metadata={
            "lloco_adapter_id": str(a.id),
            "lloco_version": str(a.version),
            "lloco_group": f"{a.collection}/{a.group}",
        },
    )
    print(
        f"wrote adapter {a.id} (v{a.version} of {a.collection}/{a.group}) to {out} as a PEFT LoRA folder "
        f"(adapter_config.json, {SAFETENSORS_NAME}); load it with peft.PeftModel.from_pretrained(model, DIR)"
    )
    return 0


def cmd_adapters_import(args: argparse.Namespace) -> int:
    from ..peft_io import check_fits, read_peft_folder, to_artifact

    adapter = read_peft_folder(args.dir)  # the files are checked before any model loads
    with open_store(args) as store:
        store.get_group(args.group, args.collection)  # an unknown group fails here, before the model loads
        lloco = _common.load_runtime(args)
        check_fits(adapter, lloco.host)
        art = to_artifact(adapter, lloco.host, encoder_fingerprint=lloco.encoder.fingerprint)
        a = store.register_adapter(
            args.group,
            art.to_bytes(),
            base_fingerprint=art.base_fingerprint,
            encoder_fingerprint=art.encoder_fingerprint,
            config=art.lora_config,
            metrics={"imported_from": art.info["source"]},
            collection=args.collection,
            activate=args.activate,
            create_group=False,
        )
    state = "active" if a.active else "not active: `lloco adapters activate " + str(a.id) + "` turns it on"
    print(
        f"imported {args.dir} as adapter {a.id} (v{a.version} of {a.collection}/{a.group}, LoRA r"
        f"{art.lora_config.get('r')} on {art.lora_config.get('target_modules')}; {state})"
    )
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser(
        "adapters", help="list, activate, deactivate, delete, import or export a group's LoRA adapters"
    )
    as_ = a.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    s = as_.add_parser("list", help="adapter versions of a group")
    s.add_argument("--group", required=True)
    add_collection_option(s)
    s.add_argument("--json", action="store_true")
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_list)
    s = as_.add_parser("activate", help="make an adapter its group's active one")
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`), not its version")
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_activate)
    s = as_.add_parser(
        "deactivate", help="leave a group without an active adapter (its adapters stay stored)"
    )
    s.add_argument("--group", required=True)
    add_collection_option(s)
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_deactivate)
    s = as_.add_parser(
        "delete", help="delete one stored adapter version by id (an active one leaves its group with none)"
    )
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`), not its version")
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_delete)
    s = as_.add_parser(
        "export",
        help="write a stored adapter as a PEFT LoRA folder",
        description="Writes DIR/adapter_config.json and DIR/adapter_model.safetensors, which "
        "peft.PeftModel.from_pretrained(base_model, DIR) loads on the decoder it was trained on.",
    )
    s.add_argument("adapter_id", type=int, help="the adapter's id (`lloco adapters list`)")
    s.add_argument("dir", metavar="DIR", help="a new (or empty) folder")
    s.add_argument("--base-model", default=None, help="recorded as base_model_name_or_path (default: none)")
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_export)
    s = as_.add_parser(
        "import",
        help="store a PEFT LoRA folder as a new version of a group's adapter",
        description="Reads DIR/adapter_config.json with DIR/adapter_model.safetensors (or "
        "adapter_model.bin, loaded with torch.load(weights_only=True) only), checks that it fits "
        "the loaded decoder (architecture, hidden size, layer count, target modules, shapes) and "
        "stores it for the current encoder; nothing is written when a check fails.",
    )
    s.add_argument("dir", metavar="DIR", help="folder written by peft's save_pretrained")
    s.add_argument("--group", required=True, help="an existing group (`lloco groups list`)")
    add_collection_option(s)
    s.add_argument("--activate", action="store_true", help="make it the group's active adapter")
    add_model_options(s, model="decoder the adapter was trained on (default: the project default)")
    add_db_options(s)
    s.set_defaults(func=cmd_adapters_import)
