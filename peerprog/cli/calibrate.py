"""``peerprog calibrate``: a repository's sensitivity from a text file, for publish."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from peerprog.cli.output import human_bytes, human_seconds, print_json
from peerprog.errors import InputError


def cmd_calibrate(args: argparse.Namespace) -> int:
    try:
        from peerprog import calibrate
    except ImportError:
        raise InputError("peerprog calibrate needs torch (pip install 'peerprog[torch]')") from None
    text_path = Path(args.text)
    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{text_path}: cannot read the text: {e}") from None
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if args.json or not sys.stderr.isatty():
            return
        elapsed = time.monotonic() - started
        eta = human_seconds(elapsed / done * (total - done)) if done else "?"
        sys.stderr.write(f"\rcalibrating: batch {done}/{total}, ETA {eta}   ")
        if done == total:
            sys.stderr.write("\n")

    result = calibrate.calibrate_repo(
        Path(args.repo),
        text,
        method=args.method,
        per=args.per,
        seq_len=args.seq_len,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        progress=progress,
    )
    meta = {"peerprog.method": args.method, "peerprog.tokens": str(result.tokens)}
    size = calibrate.write(Path(args.out), result.weights, meta)
    if args.json:
        print_json(
            {
                "out": str(args.out),
                "bytes": size,
                "tensors": len(result.weights),
                "tokens": result.tokens,
                "method": args.method,
                "unmatched": list(result.unmatched),
            }
        )
        return 0
    print(
        f"wrote {args.out} ({human_bytes(size)}): the {args.method} sensitivity of "
        f"{len(result.weights)} tensors from {result.tokens} tokens"
    )
    if result.unmatched:
        shown = ", ".join(result.unmatched[:5])
        more = f" and {len(result.unmatched) - 5} more" if len(result.unmatched) > 5 else ""
        print(f"  parameters that match no tensor of the files (skipped): {shown}{more}")
    print(f"  publish with: peerprog publish {args.repo} --sensitivity {args.out} ...")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure how much each weight of a transformers repository matters, on a "
        "text file, for 'publish --sensitivity' (needs torch and transformers)",
    )
    p.add_argument("repo", help="a transformers or sentence-transformers folder")
    p.add_argument("--text", required=True, help="a UTF-8 text file to calibrate on")
    p.add_argument("--out", required=True, help="the sensitivity file to write (safetensors)")
    p.add_argument(
        "--method",
        default="fisher",
        choices=("fisher", "grad2", "activations"),
        help="fisher: the output's Fisher diagonal (default); grad2: the squared gradient "
        "of the LM loss (causal LMs); activations: input channels' mean squares (AWQ)",
    )
    p.add_argument(
        "--per",
        default="row",
        choices=("row", "weight"),
        help="one sensitivity per row (default, a small file) or per weight",
    )
    p.add_argument("--max-tokens", type=int, default=32768, help="tokens of the text to use")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_calibrate)
