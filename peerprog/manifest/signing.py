"""Ed25519 keys and signatures for manifests.

A public key is written ``ed25519:<base64url, no padding>``; that string is what
``trust.publishers`` lists. Signatures cover a domain-separation prefix and the manifest
body, so a signature over a manifest can never be replayed as a signature over anything else.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from peerprog.errors import InputError, VerificationError

_DOMAIN = b"peerprog manifest v1\x00"
PREFIX = "ed25519:"


def public_key_string(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64url>`` for ``key``."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64url>``; :class:`VerificationError` if malformed."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise VerificationError(f"publisher key {text!r:.80} does not start with {PREFIX!r}")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if len(raw) != 32:
            raise ValueError("wrong length")
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise VerificationError(f"publisher key {text!r:.80} is not a valid Ed25519 key") from None


def sign(key: Ed25519PrivateKey, body: bytes) -> bytes:
    """Sign a manifest body."""
    return key.sign(_DOMAIN + body)


def verify(publisher: str, body: bytes, signature: bytes) -> None:
    """Check ``signature`` over ``body`` by ``publisher``; :class:`VerificationError` if not."""
    key = parse_public_key(publisher)
    try:
        key.verify(signature, _DOMAIN + body)
    except InvalidSignature:
        raise VerificationError("manifest signature does not verify") from None


def generate_key_file(path: Path) -> str:
    """Write a new private key to ``path`` (PEM, mode 0600; never overwrites).

    Returns the public key string.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return public_key_string(key.public_key())


def load_key_file(path: Path, *, check_mode: bool = True) -> Ed25519PrivateKey:
    """Read a private key written by :func:`generate_key_file`.

    Refuses a key file that others can read (as ssh does), unless ``check_mode`` is false.
    """
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        hint = (
            " (it is a public key: use the private key file keygen wrote)"
            if (data.lstrip().startswith((b"ed25519:", b"-----BEGIN PUBLIC KEY")))
            else ""
        )
        raise InputError(f"{path}: not a PEM private key{hint}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 private key")
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"{path}: key file is accessible by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    return key
