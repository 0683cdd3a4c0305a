"""``lloco info`` (the model, encoder and fingerprints) and ``lloco encoder import`` (an encoder folder from an
AutoCompressor checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from . import _common
from ._common import add_model_options, add_preset_option, preset_of, print_json


def cmd_info(args: argparse.Namespace) -> int:
    preset = preset_of(args)
    if preset is not None and args.model is None and args.encoder is None:
        print_json({"preset": preset.to_dict()})  # what it sets, without loading a model
        return 0
    lloco = _common.load_runtime(args)
    enc = lloco.encoder
    info = {
        "model": lloco.host.name,
        "model_path": str(lloco.host.path),
        "model_fingerprint": lloco.host.fingerprint,
        "device": str(lloco.host.device),
        "dtype": str(lloco.host.dtype),
        "hidden_size": lloco.host.hidden_size,
        "context_window": lloco.host.context_window,
        "encoder": enc.config.to_dict(),
        "encoder_fingerprint": enc.fingerprint,
        "compression_ratio": enc.config.ratio,
    }
    if preset is not None:
        info["preset"] = preset.to_dict()
        info["encoder_differs_from_preset"] = preset.encoder_mismatches(enc.config)
    print_json(info)
    return 0


def cmd_encoder_import(args: argparse.Namespace) -> int:
    from ..encoder import ContextEncoder

    preset = preset_of(args)
    src, out = Path(args.dir), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    if args.segment_length is not None and args.segment_length < 1:
        raise InputError("--segment-length takes a positive token count, e.g. 1536")
    segment_length = args.segment_length or (preset.segment_length if preset else None)
    accumulate = args.accumulate if args.accumulate is not None else (preset.accumulate if preset else None)
    enc = ContextEncoder.from_autocompressor(
        src,
        segment_length=segment_length,
        accumulate=accumulate,
        expect_summary_length=preset.summary_length if preset else None,
        device=args.device,
        dtype=args.dtype,
    )
    enc.save(out)
    c = enc.config
    print(
        f"wrote encoder {out} from AutoCompressor {src}: {c.summary_length} summary vectors per "
        f"{c.segment_length}-token segment ({c.ratio:.1f}x), accumulation {'on' if c.accumulate else 'off'}, "
        f"{enc.dtype}; fingerprint {enc.fingerprint[:12]} on base model {enc.host.fingerprint[:12]}"
    )
    print(f"its decoder is the checkpoint's own Llama: use --model {src} --encoder {out}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "info",
        parents=[common],
        help="show the model, encoder and fingerprints",
        description="Show the model, encoder and fingerprints. With --preset alone: what the preset "
        "sets, without loading a model; with --model or --encoder too: also how the encoder "
        "differs from it.",
    )
    add_preset_option(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("encoder", help="import an encoder from another format")
    es = s.add_subparsers(dest="encoder_command", metavar="ACTION", required=True)
    s = es.add_parser(
        "import",
        help="make a lloco encoder folder from an AutoCompressor checkpoint folder",
        description="Read an AutoCompressor-Llama checkpoint folder (config.json with the summary "
        "fields summary_length / accumulate_summary / segment_lengths, weights with "
        "embed_summary.weight as safetensors, sharded or not, or pytorch_model*.bin read with "
        "torch.load(weights_only=True) only) and write a lloco encoder folder with its "
        "fingerprint. The encoder runs on the checkpoint's own Llama: pass the same folder as "
        "--model to the other commands.",
    )
    s.add_argument("dir", metavar="DIR", help="the checkpoint folder, e.g. AutoCompressor-Llama-2-7b-6k")
    s.add_argument("--out", required=True, metavar="ENC", help="a new (or empty) folder for the encoder")
    s.add_argument(
        "--segment-length",
        type=int,
        default=None,
        metavar="N",
        help="tokens per segment (default: "
        "the preset's, else the checkpoint config's segment_lengths[0], else 1536)",
    )
    s.add_argument(
        "--accumulate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prepend a "
        "document's earlier summaries to its later segments (default: the preset's, else the "
        "checkpoint's accumulate_summary)",
    )
    add_preset_option(s, "; the checkpoint's summary vector count must match the preset's")
    add_model_options(s, only=("device", "dtype"))
    s.set_defaults(func=cmd_encoder_import)
