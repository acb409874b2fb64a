"""Error types, named by who is at fault.

* :class:`InputError` — the user's input is bad (a file, an argument, a config value). The CLI
  prints its message on one line and exits 1.
* :class:`PeerFault` — a remote party sent something wrong (a chunk that fails its hash, a
  garbage message, a manifest that does not verify). The swarm penalises the peer.
* Anything else (``AssertionError``, ``RuntimeError``...) is our bug and should crash tests.
"""

from __future__ import annotations


class PeerprogError(Exception):
    """Base of every error peerprog raises on purpose."""


class InputError(PeerprogError):
    """Bad input from the user: a missing or malformed file, a bad argument or config."""


class FormatError(InputError):
    """A model file or encoded stream is malformed or truncated."""


class PeerFault(PeerprogError):
    """A peer (or web seed) sent something wrong; the swarm penalises it."""


class VerificationError(PeerFault):
    """A manifest, signature or chunk failed verification. The message names what failed."""


class UntrustedPublisher(VerificationError):
    """A manifest is signed by a key that is not in ``trust.publishers``."""
