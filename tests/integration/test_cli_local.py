"""The offline CLI through real subprocesses: keygen, publish, reconstruct, inspect.

Bad input exits 1 with one line on stderr and no traceback; usage errors exit 2.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peerprog.formats import read_model
from peerprog.reference import digits
from peerprog.store import Store

MODEL = digits.model_path()


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "peerprog", *args], capture_output=True, text=True, timeout=120
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def fails(*args: str, match: str, code: int = 1) -> None:
    proc = run(*args, ok=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    if code == 1:
        assert len(lines) == 1, proc.stderr
    assert match in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pub")
    key = d / "key.pem"
    out = run("keygen", str(key)).stdout.strip().splitlines()[-1]
    assert out.startswith("ed25519:")
    doc = json.loads(
        run(
            "publish",
            str(MODEL),
            "--name",
            "digits-cnn",
            "--key",
            str(key),
            "--store",
            str(d / "store"),
            "--chunk-size",
            "16384",
            "--json",
        ).stdout
    )
    return {"dir": d, "key": key, "public": out, "doc": doc, "store": d / "store"}


def test_keygen_writes_0600_and_refuses_to_overwrite(published: dict[str, object]) -> None:
    key = published["key"]
    assert isinstance(key, Path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    fails("keygen", str(key), match="already exists")


def test_publish_json_matches_design(published: dict[str, object]) -> None:
    doc = published["doc"]
    assert isinstance(doc, dict)
    assert set(doc) == {
        "model_id",
        "name",
        "version",
        "codec",
        "source_bytes",
        "total_bytes",
        "levels",
        "torrent",  # beside DESIGN's keys: the model's BitTorrent torrent
    }
    torrent = doc["torrent"]
    assert set(torrent) == {"info_hash", "magnet", "web_seeds"} and torrent["web_seeds"] == []
    assert f"urn:btmh:1220{torrent['info_hash']}&dn={doc['model_id']}" in torrent["magnet"]
    assert doc["name"] == "digits-cnn" and doc["version"] == 1 and doc["codec"] == "groupplane"
    assert doc["source_bytes"] == sum(t.nbytes for t in read_model(MODEL).values())
    cum = 0
    for i, lv in enumerate(doc["levels"]):
        cum += lv["bytes"]
        assert lv == {"level": i, "bytes": lv["bytes"], "cumulative_bytes": cum}
    assert cum == doc["total_bytes"] < doc["source_bytes"]


def test_republish_bumps_version(published: dict[str, object], tmp_path: Path) -> None:
    store = tmp_path / "s"
    key = str(published["key"])
    a = json.loads(
        run(
            "publish", str(MODEL), "--name", "m", "--key", key, "--store", str(store), "--json"
        ).stdout
    )
    b = json.loads(
        run(
            "publish",
            str(MODEL),
            "--name",
            "m",
            "--key",
            key,
            "--store",
            str(store),
            "--codec",
            "paper",
            "--json",
        ).stdout
    )
    assert (a["version"], b["version"]) == (1, 2)
    assert (store / "names" / "m").read_text().strip() == b["model_id"]


def test_reconstruct_max_is_bit_exact(published: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "full.safetensors"
    doc = json.loads(
        run(
            "reconstruct",
            "--store",
            str(published["store"]),
            "digits-cnn",
            "--level",
            "max",
            "--out",
            str(out),
            "--json",
        ).stdout
    )
    assert doc["exact"] is True
    got, want = read_model(out), read_model(MODEL)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype
        assert np.array_equal(got[k].array.view(np.uint8), want[k].array.view(np.uint8))


def test_reconstruct_level0_is_usable(published: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "l0.safetensors"
    run(
        "reconstruct",
        "--store",
        str(published["store"]),
        "digits-cnn",
        "--level",
        "0",
        "--out",
        str(out),
    )
    ev = digits.evaluate(digits.load_state_dict(out))
    assert ev.agreement >= 0.95


def test_inspect_json(published: dict[str, object]) -> None:
    doc = json.loads(
        run("inspect", "--store", str(published["store"]), "digits-cnn", "--json").stdout
    )
    assert doc["complete"] is True and doc["publisher"] == published["public"]
    assert doc["chunks_held"] == doc["chunks"] == sum(lv["chunks"] for lv in doc["levels"])
    text = run("inspect", "--store", str(published["store"]), "digits-cnn").stdout
    assert text.startswith("digits-cnn version 1  (the name points here)\n")
    assert f"  id         {doc['model_id']}\n" in text and "bits/weight" in text
    assert doc["other_versions"] == []
    # the start of the id names the model too; one that fits no model is an error
    prefix = run("inspect", "--store", str(published["store"]), doc["model_id"][:12]).stdout
    assert prefix == text
    fails("inspect", "--store", str(published["store"]), "ffffffffffff", match="no model")
    listing = run("ls", "--store", str(published["store"])).stdout.splitlines()
    assert listing[0].split() == ["name", "version", "id", "levels", "files", "size", "state"]
    assert listing[1].split()[:3] == ["digits-cnn", "1", doc["model_id"][:12]]
    assert listing[1].endswith("complete")


def test_inspect_into_a_closed_pipe_is_not_an_error(published: dict[str, object]) -> None:
    cmd = [sys.executable, "-m", "peerprog", "inspect", "--store", str(published["store"])]
    proc = subprocess.run(
        " ".join([*cmd, "digits-cnn", "|", "head", "-1"]), shell=True, capture_output=True
    )
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr


def test_bad_inputs_exit_1_with_one_line(published: dict[str, object], tmp_path: Path) -> None:
    key, store = str(published["key"]), str(published["store"])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(100))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(MODEL.read_bytes()[:5000])
    fails(
        "publish",
        str(tmp_path / "missing.safetensors"),
        "--name",
        "x",
        "--key",
        key,
        "--store",
        store,
        match="no such file",
    )
    fails(
        "publish", str(garbage), "--name", "x", "--key", key, "--store", store, match="safetensors"
    )
    fails(
        "publish",
        str(truncated),
        "--name",
        "x",
        "--key",
        key,
        "--store",
        store,
        match="out of range",
    )
    fails(
        "publish",
        str(MODEL),
        "--name",
        "../bad",
        "--key",
        key,
        "--store",
        store,
        match="not a valid model name",
    )
    fails(
        "publish", str(MODEL), "--name", "x", "--key", str(garbage), "--store", store, match="key"
    )
    fails(
        "publish",
        str(MODEL),
        "--name",
        "x",
        "--key",
        key,
        "--store",
        store,
        "--codec",
        "nope",
        match="invalid choice: 'nope'",
        code=2,  # the codecs are the option's choices: a usage error
    )
    fails(
        "reconstruct",
        "--store",
        store,
        "nope",
        "--level",
        "0",
        "--out",
        str(tmp_path / "o"),
        match="no model 'nope'",
    )
    fails(
        "reconstruct",
        "--store",
        store,
        "digits-cnn",
        "--level",
        "99",
        "--out",
        str(tmp_path / "o"),
        match="level 99 is not present",
    )
    fails(
        "reconstruct",
        "--store",
        store,
        "digits-cnn",
        "--level",
        "x",
        "--out",
        str(tmp_path / "o"),
        match="integer or 'max'",
    )
    fails("inspect", "--store", str(tmp_path / "nostore"), "digits-cnn", match="not a peerprog")
    fails("publish", str(MODEL), match="", code=2)


def test_key_readable_by_others_is_refused(published: dict[str, object], tmp_path: Path) -> None:
    key = tmp_path / "loose.pem"
    key.write_bytes(Path(str(published["key"])).read_bytes())
    key.chmod(0o644)
    fails(
        "publish",
        str(MODEL),
        "--name",
        "x",
        "--key",
        str(key),
        "--store",
        str(tmp_path / "s"),
        match="accessible by others",
    )


def copy_store(published: dict[str, object], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the published store, and the folder of its digits-cnn model."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(str(published["store"]), dst)
    mid = (dst / "names" / "digits-cnn").read_text().strip()
    return dst, dst / "models" / mid


def flip_bit(path: Path, pos: int, mask: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= mask
    path.write_bytes(bytes(data))


def reconstruct_fails(store: Path, level: str, out: Path, match: str) -> None:
    fails(
        "reconstruct",
        "--store",
        str(store),
        "digits-cnn",
        "--level",
        level,
        "--out",
        str(out),
        match=match,
    )


def test_tampered_chunk_is_detected(published: dict[str, object], tmp_path: Path) -> None:
    store, model = copy_store(published, tmp_path)
    flip_bit(model / "levels" / "0", 100, 0x40)
    reconstruct_fails(store, "0", tmp_path / "o", "chunk 0 fails its SHA-256")


def test_tampered_manifest_is_detected(published: dict[str, object], tmp_path: Path) -> None:
    store, model = copy_store(published, tmp_path)
    man = model / "manifest.msgpack"
    flip_bit(man, man.stat().st_size // 3, 0x01)
    fails("inspect", "--store", str(store), "digits-cnn", match="stored manifest")


def test_missing_chunk_means_level_absent(published: dict[str, object], tmp_path: Path) -> None:
    store, model = copy_store(published, tmp_path)
    s = Store(store)
    signed = s.load_manifest(model.name, None)
    with s.open_files(signed) as files:  # the last chunk never arrived
        have = files.recorded()
        have.clear(len(signed.manifest.chunks) - 1)
        files.record(have)
    reconstruct_fails(store, "max", tmp_path / "o", "is not complete")


def test_publish_reads_pt_and_npz(published: dict[str, object], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tensors = digits.load_state_dict()
    pt = tmp_path / "m.pt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in tensors.items()}}, pt)
    npz = tmp_path / "m.npz"
    np.savez(npz, **tensors)
    for src in (pt, npz):
        out = tmp_path / f"{src.suffix[1:]}.safetensors"
        store = str(tmp_path / f"s{src.suffix}")
        run("publish", str(src), "--name", "m", "--key", str(published["key"]), "--store", store)
        run("reconstruct", "--store", store, "m", "--level", "max", "--out", str(out))
        got = read_model(out)
        for k, v in tensors.items():
            assert np.array_equal(got[k].array, v)


def test_every_publish_option_has_help_and_codecs_are_listed() -> None:
    text = run("publish", "--help").stdout
    for option in ("--name", "--codec", "--codec-param", "--chunk-size", "--socket", "--json"):
        block = text.split(option, 1)[1].split("\n  --", 1)[0]
        assert len(block.split()) > 3, f"{option} has no help: {block!r}"
    assert "{bitplane,groupplane,paper" in text


def test_a_public_key_file_is_named_as_such_before_any_mode_advice(
    published: dict[str, object], tmp_path: Path
) -> None:
    public = tmp_path / "key.pub"
    public.write_text(str(published["public"]) + "\n")
    public.chmod(0o644)
    fails(
        "publish", str(MODEL), "--name", "x", "--key", str(public),
        "--store", str(tmp_path / "s"), match="it is a public key",
    )  # fmt: skip
    proc = run(
        "publish", str(MODEL), "--name", "x", "--key", str(public),
        "--store", str(tmp_path / "s"), ok=False,
    )  # fmt: skip
    assert "chmod" not in proc.stderr


def test_log_level_shows_the_log_and_none_hides_it(published: dict[str, object]) -> None:
    store = str(published["store"])
    quiet = run("inspect", "--store", store, "digits-cnn")
    assert quiet.stderr == ""
    loud = run("--log-level", "debug", "ls", "--store", store)
    assert loud.returncode == 0
    usage = run("--log-level", "loud", "ls", "--store", store, ok=False)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
