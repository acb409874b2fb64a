"""The offline commands: ``keygen``, ``publish``, ``reconstruct``, ``inspect``, ``ls``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peerprog.cli.output import human_bytes, human_seconds, print_json
from peerprog.codec import CODECS, DEFAULT_CODEC, exact_at
from peerprog.errors import InputError, PeerprogError
from peerprog.formats.safetensors import read_sensitivity
from peerprog.manifest import SignedManifest, generate_key_file, load_key_file, valid_name
from peerprog.manifest.torrent import piece_length_ok
from peerprog.manifest.tree import MARKER, RepoFile
from peerprog.store import Store, Unusable, publish_file, publish_repo
from peerprog.store.publish import torrent_json
from peerprog.store.scan import RepoScan, scan_repo
from peerprog.store.torrents import model_torrent, stored_torrent


def cmd_keygen(args: argparse.Namespace) -> int:
    public = generate_key_file(Path(args.keyfile))
    print(f"wrote private key {args.keyfile} (mode 600); trust.publishers entry:")
    print(public)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    key = load_key_file(Path(args.key))
    store = Store(Path(args.store))

    started = time.monotonic()

    def progress(stage: str, done: int, total: int) -> None:
        if args.json or not sys.stderr.isatty() or stage != "encode":
            return
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = human_seconds((total - done) / rate) if rate > 0 else "?"
        sys.stderr.write(
            f"\rencoding: {done / max(1, total):4.0%} of {human_bytes(total)}, "
            f"{human_bytes(rate)}/s, ETA {eta}   "
        )
        if done == total:
            sys.stderr.write("\n")

    source = Path(args.source)
    options: dict[str, Any] = {
        "name": args.name,
        "key": key,
        "store": store,
        "codec": args.codec,
        "chunk_size": args.chunk_size,
        "params": dict(args.codec_param) or None,
        "progress": progress,
        "web_seeds": args.web_seed,
    }
    if args.sensitivity:
        options["sensitivity"] = read_sensitivity(Path(args.sensitivity))
    scan = None
    if source.is_dir():
        scan = scan_repo(source, args.include, args.exclude)
        result = publish_repo(source, scan=scan, **options)
    elif args.include or args.exclude:
        raise InputError(f"{source}: --include and --exclude choose files of a folder")
    else:
        result = publish_file(source, **options)
    told = tell_node(args.socket) if args.socket else None
    if args.json:
        doc = result.to_json()
        if told is not None:
            doc["node_told"] = told
        if scan is not None:
            doc["excluded_files"] = scan.excluded
            doc["duplicate_weights"] = list(scan.duplicates)
        print_json(doc)
        return 0
    m = result.signed.manifest
    print(f"published {m.name} version {m.version} ({m.codec}) as {result.signed.model_id}")
    if scan is not None:
        for line in repo_summary(scan, m.files, len(m.tensors)):
            print(line)
    print(f"  source {human_bytes(result.source_bytes)}, encoded {human_bytes(result.total_bytes)}")
    for lv in result.levels:
        frac = lv.cumulative_bytes / max(1, result.source_bytes)
        print(f"  level {lv.level}: {human_bytes(lv.bytes):>10}  cumulative {frac:6.1%}")
    if result.torrent is not None:
        print(f"  torrent: {result.torrent.magnet()}")
    if told:
        print(f"  the node at {args.socket} serves it now")
    return 0


def repo_summary(scan: RepoScan, files: Sequence[RepoFile], tensors: int) -> list[str]:
    """What a publish of a folder coded and what it carried whole."""
    coded = [f for f in files if f.coded]
    whole = [f for f in files if not f.coded]
    lines = [
        f"  coded {len(coded)} safetensors file(s), {tensors:,} tensors, "
        f"{human_bytes(sum(f.size for f in coded))}",
        f"  carried whole in level 0: {len(whole)} file(s), "
        f"{human_bytes(sum(f.size for f in whole))}"
        + (f"; left out {scan.excluded} (.git/ and --include/--exclude)" if scan.excluded else ""),
    ]
    shown = whole if len(whole) <= 12 else whole[:10]
    lines += [f"    {f.path}  {human_bytes(f.size)}" for f in shown]
    if len(shown) < len(whole):
        lines.append(f"    ... and {len(whole) - len(shown)} more")
    if scan.duplicates:
        dup = sum(f.size for f in whole if f.path in set(scan.duplicates))
        lines.append(
            f"  note: {len(scan.duplicates)} file(s) look like another copy of the weights "
            f"({', '.join(scan.duplicates[:4])}{' ...' if len(scan.duplicates) > 4 else ''}; "
            f"{human_bytes(dup)}), carried whole ahead of every level: leave them out with "
            "--exclude to make level 0 smaller"
        )
    return lines


def codec_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (a bare word is a string)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, not {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def tell_node(socket: str) -> bool:
    """Ask the node serving the store to take up the new model; False (with a warning)
    if it cannot be reached — it finds the model at its next look into the store anyway."""
    from peerprog.api.client import Client

    try:
        Client(socket, timeout=30).rescan()
    except (PeerprogError, OSError) as e:
        sys.stderr.write(
            f"peerprog: warning: could not tell the node at {socket} ({e}); it takes the "
            "model up at its next look into the store (models.rescan_interval)\n"
        )
        return False
    return True


def resolve_ref(store: Store, ref: str) -> list[str]:
    """The model ids ``ref`` names in ``store``: every stored version of a name (newest
    first; the one ``names/`` points at first of equals), or the one model whose id is
    ``ref`` or starts with it (at least 4 hex digits)."""
    ids = store.model_ids()
    pointed = store.resolve(ref) if valid_name(ref) else None
    named = {i: m for i in ids if (m := _manifest_of(store, i)) and m.manifest.name == ref}
    if named or pointed:
        order = sorted(named, key=lambda i: (named[i].manifest.version, i == pointed), reverse=True)
        if pointed and pointed not in named:  # its manifest does not read: say why
            store.load_manifest(pointed, None)
        return order
    text = ref.lower()
    if len(text) >= 4 and all(c in "0123456789abcdef" for c in text):
        matches = [i for i in ids if i.startswith(text)]
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise InputError(f"{ref!r} is the start of several model ids in {store.root}: {shown}")
        if matches:
            return matches
    known = ", ".join(sorted(store.names())) or "none"
    raise InputError(f"no model {ref!r} in {store.root} (names: {known})")


def _manifest_of(store: Store, model_id: str) -> SignedManifest | None:
    try:
        return store.load_manifest(model_id, None)
    except PeerprogError:
        return None


def open_model(store: Store, ref: str) -> SignedManifest:
    """The newest stored version a name (or an id, or its start) names, verified."""
    return store.load_manifest(resolve_ref(store, ref)[0], None)


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
    if m.is_repository:
        check_out_dir(out)
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
    if m.is_repository:
        doc["files"] = len(m.files)
    if args.json:
        print_json(doc)
    else:
        what = f"{len(m.files)} files, " if m.is_repository else ""
        print(
            f"wrote {out}: {m.name} level {level}/{m.levels_total - 1} "
            f"({what}{human_bytes(nbytes)})"
        )
    return 0


def check_out_dir(out: Path) -> None:
    """A repository is written as a folder: ``out`` must be new, empty, or one peerprog
    wrote (it has the marker), never an app's own folder."""
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder (a repository is written as one)")
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise InputError(
            f"{out}: a folder peerprog did not write (it has no {MARKER}); "
            "remove it or choose another"
        )


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


def inspect_doc(
    store: Store, signed: SignedManifest, *, build_torrent: bool = False
) -> dict[str, object]:
    """What ``inspect --json`` prints of one stored model; ``build_torrent``: build its
    torrent from its level files if it has none and is held whole."""
    m = signed.manifest
    bits = store.held(signed)
    held = set(bits.indices())
    torrent = stored_torrent(store, signed)
    if torrent is None and build_torrent:
        files = store.open_files(signed)
        try:
            torrent = model_torrent(store, signed, files, bits)
        finally:
            files.close()
    weights = sum(t.numel for t in m.tensors)
    levels: list[dict[str, object]] = []
    cum = 0
    for lv in m.levels:
        cum += lv.bytes
        levels.append(
            {
                "level": lv.level,
                "bytes": lv.bytes,
                "cumulative_bytes": cum,
                "bits_per_weight": round(cum * 8 / max(1, weights), 3),
                "chunks": lv.chunk_count,
                "chunks_held": sum(1 for i in lv.chunks if i in held),
                "quality": lv.quality,
            }
        )
    return {
        "model_id": signed.model_id,
        "name": m.name,
        "version": m.version,
        "named": store.resolve(m.name) == signed.model_id,
        "codec": m.codec,
        "codec_params": m.codec_params,
        "publisher": signed.publisher,
        "created": m.created,
        "chunk_size": m.chunk_size,
        "source_bytes": m.source_bytes,
        "total_bytes": m.total_bytes,
        "weights": weights,
        "tensors": len(m.tensors),
        "chunks": len(m.chunks),
        "chunks_held": len(held),
        "complete": len(held) == len(m.chunks),
        "metadata": m.metadata,
        "levels": levels,
        "files": [
            {"path": f.path, "size": f.size, "coded": f.coded, "sha256": f.sha256.hex()}
            for f in m.files
        ],
        "torrent": None
        if torrent is None
        else {**torrent_json(torrent), "signed": torrent.attestation is not None},
    }


def inspect_lines(doc: dict[str, Any]) -> list[str]:
    """``inspect``'s text for one model."""
    params = "  ".join(f"{k}={v}" for k, v in doc["codec_params"].items())
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(doc["created"])))
    held = "complete" if doc["complete"] else f"held {doc['chunks_held']}/{doc['chunks']} chunks"
    lines = [
        f"{doc['name']} version {doc['version']}"
        + ("  (the name points here)" if doc["named"] else ""),
        f"  id         {doc['model_id']}",
        f"  codec      {doc['codec']}  {params}",
        f"  publisher  {doc['publisher']}",
        f"  created    {created}",
        f"  source     {human_bytes(doc['source_bytes'])}: {doc['weights']:,} weights in "
        f"{doc['tensors']} tensors",
        f"  encoded    {human_bytes(doc['total_bytes'])} in {doc['chunks']} chunks of "
        f"{human_bytes(doc['chunk_size'])}; {held}",
    ]
    files = doc["files"]
    if files:
        coded = sum(1 for f in files if f["coded"])
        lines.append(
            f"  files      {len(files)} ({coded} coded safetensors, {len(files) - coded} "
            f"carried whole: {human_bytes(sum(f['size'] for f in files if not f['coded']))})"
        )
    lines.append("  level  bytes       bits/weight  of source  chunks held  rel. error")
    for lv in doc["levels"]:
        err = lv["quality"].get("rel_rmse_ppm")
        rel = "" if err is None else f"{err / 1e6:.2e}" if err else "exact"
        lines.append(
            f"  {lv['level']:>5}  {human_bytes(lv['bytes']):>10}  {lv['bits_per_weight']:>11.2f}"
            f"  {lv['cumulative_bytes'] / max(1, doc['source_bytes']):>9.1%}"
            f"  {lv['chunks_held']:>5}/{lv['chunks']:<5}  {rel}"
        )
    torrent = doc["torrent"]
    if torrent is not None:
        by = "signed by the publisher" if torrent["signed"] else "built from the levels"
        lines.append(f"  torrent    {torrent['magnet']}  ({by})")
    elif piece_length_ok(int(doc["chunk_size"])):
        lines.append("  torrent    none yet (built once the model is held whole)")
    else:
        lines.append("  torrent    none: the chunk size is not a BitTorrent v2 piece length")
    return lines


def cmd_inspect(args: argparse.Namespace) -> int:
    store = Store(Path(args.store), create=False)
    docs = [
        inspect_doc(store, store.load_manifest(i, None), build_torrent=True)
        for i in resolve_ref(store, args.name)
    ]
    if args.json:
        doc = dict(docs[0])
        doc["other_versions"] = [
            {"model_id": d["model_id"], "version": d["version"], "complete": d["complete"]}
            for d in docs[1:]
        ]
        print_json(doc)
        return 0
    out: list[str] = []
    for doc in docs:
        out += [*inspect_lines(doc), ""]
    sys.stdout.write("\n".join(out))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    store = Store(Path(args.store), create=False)
    rows = [["name", "version", "id", "levels", "files", "size", "state"]]
    docs = []
    for model_id in store.model_ids():
        try:
            signed = store.load_manifest(model_id, None)
        except PeerprogError as e:
            rows.append(["?", "?", model_id[:12], "", "", "", f"unreadable: {e}"])
            continue
        docs.append(inspect_doc(store, signed))
    docs.sort(key=lambda d: (str(d["name"]), -int(d["version"])))  # type: ignore[call-overload]
    for d in docs:
        lv = d["levels"]
        assert isinstance(lv, list)
        full = sum(1 for x in lv if x["chunks_held"] == x["chunks"])
        state = "complete" if d["complete"] else f"{d['chunks_held']}/{d['chunks']} chunks"
        if not d["named"]:
            state += " (older version)"
        rows.append(
            [
                str(d["name"]),
                str(d["version"]),
                str(d["model_id"])[:12],
                f"{full}/{len(lv)}",
                str(len(d["files"])) if d["files"] else "-",  # type: ignore[arg-type]
                human_bytes(int(d["total_bytes"])),  # type: ignore[call-overload]
                state,
            ]
        )
    if args.json:
        print_json(docs)
        return 0
    if len(rows) == 1:
        print(f"no models in {store.root}")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="write a new Ed25519 publisher key")
    p.add_argument("keyfile")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("publish", help="encode, sign and store a model")
    p.add_argument(
        "source",
        help="a folder (a repository: every .safetensors file coded, every other file carried "
        "whole), or one .safetensors, .pt/.pth state dict or .npz file",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="publish only the files of the folder matching GLOB (as huggingface-cli "
        "download's; a pattern ending in / means that folder); repeatable",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out the files matching GLOB, e.g. '*.bin' or 'onnx/'; repeatable "
        "(.git/ is always left out)",
    )
    p.add_argument(
        "--name",
        required=True,
        help="the model's name (letters, digits, . _ -); publishing a name again makes a "
        "new version",
    )
    p.add_argument("--key", required=True, help="private key file from keygen")
    p.add_argument("--store", required=True, help="store folder (created if missing)")
    p.add_argument(
        "--codec",
        default=DEFAULT_CODEC,
        choices=sorted(CODECS),
        help=f"how weights are cut into levels (default {DEFAULT_CODEC}; 'paper' is lossy)",
    )
    p.add_argument(
        "--codec-param",
        action="append",
        default=[],
        type=codec_param,
        metavar="KEY=VALUE",
        help="a codec setting, the value in JSON (e.g. targets_mbpw=[300,1000,4000] for "
        "groupplane's ladder of milli-bits per weight); repeatable",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="bytes per chunk (default: by the model's size, 16 KiB to 4 MiB)",
    )
    p.add_argument(
        "--sensitivity",
        metavar="FILE",
        help="a safetensors file of how much each tensor's (or row's) error matters, by "
        "the model's tensor names ('peerprog calibrate' writes one): the rate allocation "
        "gives bits where they matter (default: data-free)",
    )
    p.add_argument(
        "--web-seed",
        action="append",
        default=[],
        metavar="URL",
        help="a BEP 19 web seed for the model's BitTorrent v2 torrent: the URL of a folder "
        "holding <model id>/levels/<n>, such as a node's http://HOST:PORT/p2p/v1/models/ or "
        "a static mirror's <mirror>/models/; repeatable",
    )
    p.add_argument(
        "--socket",
        help="API socket of a node running on this store: tell it to serve the new "
        "version now (else it notices within its models.rescan_interval)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "reconstruct",
        help="write a level's approximation: a safetensors file, or a repository's folder",
    )
    p.add_argument("name", help="model name, id, or the start of an id")
    p.add_argument("--store", required=True)
    p.add_argument("--level", required=True, help="a level number or 'max'")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("inspect", help="show a stored model's manifest and what is held")
    p.add_argument("name", help="model name (every version), id, or the start of an id")
    p.add_argument("--store", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ls", help="list the models of a store")
    p.add_argument("--store", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
