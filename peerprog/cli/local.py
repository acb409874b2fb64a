"""The offline commands: ``keygen``, ``publish``, ``reconstruct``, ``inspect``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peerprog.cli.output import human_bytes, print_json
from peerprog.codec import DEFAULT_CODEC, exact_at
from peerprog.errors import InputError
from peerprog.manifest import SignedManifest, generate_key_file, load_key_file, valid_model_id
from peerprog.store import Store, Unusable, publish_file


def cmd_keygen(args: argparse.Namespace) -> int:
    public = generate_key_file(Path(args.keyfile))
    print(f"wrote private key {args.keyfile} (mode 600); trust.publishers entry:")
    print(public)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    key = load_key_file(Path(args.key))
    store = Store(Path(args.store))

    def progress(stage: str, done: int, total: int) -> None:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\r{stage}: {done}/{total} chunks")
            if done == total:
                sys.stderr.write("\n")

    result = publish_file(
        Path(args.source),
        name=args.name,
        key=key,
        store=store,
        codec=args.codec,
        chunk_size=args.chunk_size,
        progress=progress,
    )
    if args.json:
        print_json(result.to_json())
        return 0
    m = result.signed.manifest
    print(f"published {m.name} version {m.version} ({m.codec}) as {result.signed.model_id}")
    print(f"  source {human_bytes(result.source_bytes)}, encoded {human_bytes(result.total_bytes)}")
    for lv in result.levels:
        frac = lv.cumulative_bytes / max(1, result.source_bytes)
        print(f"  level {lv.level}: {human_bytes(lv.bytes):>10}  cumulative {frac:6.1%}")
    return 0


def open_model(store: Store, ref: str) -> SignedManifest:
    """Resolve a name (or a model id) in ``store`` and verify its manifest."""
    model_id = ref if valid_model_id(ref) else store.resolve(ref)
    if model_id is None or not store.has_manifest(model_id):
        known = ", ".join(sorted(store.names())) or "none"
        raise InputError(f"no model {ref!r} in {store.root} (names: {known})")
    return store.load_manifest(model_id, None)


def parse_level(text: str, levels_total: int) -> int:
    """``max`` or an integer level that the model has."""
    if text == "max":
        return levels_total - 1
    try:
        level = int(text)
    except ValueError:
        raise InputError(f"level must be an integer or 'max', not {text!r}") from None
    if not 0 <= level < levels_total:
        raise InputError(
            f"level {level} is not present (the model has levels 0–{levels_total - 1})"
        )
    return level


def cmd_reconstruct(args: argparse.Namespace) -> int:
    store = Store(Path(args.store), create=False)
    signed = open_model(store, args.name)
    m = signed.manifest
    level = parse_level(args.level, m.levels_total)
    out = Path(args.out)
    try:
        nbytes = store.decode(signed, level, out)
    except Unusable:
        raise InputError(not_intact(store, signed, level)) from None
    except OSError as e:
        raise InputError(f"{out}: {e.strerror}") from None
    doc = {
        "model_id": signed.model_id,
        "name": m.name,
        "version": m.version,
        "level": level,
        "levels_total": m.levels_total,
        "exact": exact_at(m.codec, level, m.levels_total),
        "out": str(out),
        "bytes": nbytes,
    }
    if args.json:
        print_json(doc)
    else:
        print(f"wrote {out}: {m.name} level {level}/{m.levels_total - 1} ({human_bytes(nbytes)})")
    return 0


def not_intact(store: Store, signed: SignedManifest, level: int) -> str:
    """Why ``level`` of a stored model cannot be decoded: chunks damaged or missing."""
    m = signed.manifest
    with store.open_files(signed) as files:
        held = files.recorded()
        damaged = sorted(files.damaged)
    best = -1
    for lv in m.levels:
        if not all(i in held for i in lv.chunks):
            break
        best = lv.level
    if damaged:
        shown = ", ".join(str(i) for i in damaged[:8])
        return (
            f"level {level} of {m.name} is not intact in {store.root}: chunk {shown} "
            f"fails its SHA-256 (damaged on disk; best complete level: {best})"
        )
    return f"level {level} of {m.name} is not complete in {store.root} (best complete: {best})"


def cmd_inspect(args: argparse.Namespace) -> int:
    store = Store(Path(args.store), create=False)
    signed = open_model(store, args.name)
    m = signed.manifest
    held = set(store.held(signed).indices())
    levels: list[dict[str, object]] = []
    cum = 0
    for lv in m.levels:
        cum += lv.bytes
        levels.append(
            {
                "level": lv.level,
                "bytes": lv.bytes,
                "cumulative_bytes": cum,
                "chunks": lv.chunk_count,
                "chunks_held": sum(1 for i in lv.chunks if i in held),
                "quality": lv.quality,
            }
        )
    doc = {
        "model_id": signed.model_id,
        "name": m.name,
        "version": m.version,
        "codec": m.codec,
        "codec_params": m.codec_params,
        "publisher": signed.publisher,
        "created": m.created,
        "chunk_size": m.chunk_size,
        "source_bytes": m.source_bytes,
        "total_bytes": m.total_bytes,
        "tensors": len(m.tensors),
        "chunks": len(m.chunks),
        "chunks_held": len(held),
        "complete": len(held) == len(m.chunks),
        "levels": levels,
    }
    if args.json:
        print_json(doc)
        return 0
    print(f"{m.name} version {m.version}  id {signed.model_id}")
    print(f"  codec {m.codec} {m.codec_params}")
    print(f"  publisher {signed.publisher}")
    print(
        f"  {len(m.tensors)} tensors, source {human_bytes(m.source_bytes)}, "
        f"encoded {human_bytes(m.total_bytes)} in {len(m.chunks)} chunks of "
        f"{human_bytes(m.chunk_size)}; held {len(held)}/{len(m.chunks)}"
    )
    cum = 0
    for lv in m.levels:
        cum += lv.bytes
        held_here = sum(1 for i in lv.chunks if i in held)
        print(
            f"  level {lv.level}: {human_bytes(lv.bytes):>10}"
            f"  cumulative {cum / max(1, m.source_bytes):6.1%}"
            f"  chunks {held_here}/{lv.chunk_count}  {lv.quality}"
        )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="write a new Ed25519 publisher key")
    p.add_argument("keyfile")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("publish", help="encode, sign and store a model")
    p.add_argument("source", help=".safetensors, .pt/.pth state dict or .npz")
    p.add_argument("--name", required=True)
    p.add_argument("--key", required=True, help="private key file from keygen")
    p.add_argument("--store", required=True, help="store folder")
    p.add_argument("--codec", default=DEFAULT_CODEC)
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="bytes per chunk (default: by the model's size, 16 KiB to 4 MiB)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("reconstruct", help="write a level's approximation as safetensors")
    p.add_argument("name", help="model name or id")
    p.add_argument("--store", required=True)
    p.add_argument("--level", required=True, help="a level number or 'max'")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("inspect", help="show a stored model's manifest and what is held")
    p.add_argument("name", help="model name or id")
    p.add_argument("--store", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
