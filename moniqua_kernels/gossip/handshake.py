"""Workers agree before they talk (DESIGN.md 10a).

Ranks that disagree about what they exchange do not fail cleanly on their own: another
``bits`` or model size makes gloo abort the receiving process ("Received data size
doesn't match", SIGABRT), another theta, rounding or seed corrupts every model silently,
another topology or algorithm leaves a rank waiting for a message never sent.  So at
construction (and at resume) every rank sends a fingerprint of what both ends must
share, and every rank raises the same ``ConfigMismatch`` naming each field that differs
and which ranks hold which value.

The fingerprint travels as JSON in one fixed-size (4 KiB) uint8 all-gather: fixed, so
that ranks with different models or bit widths still exchange equal-sized buffers (the
mismatch this exists to report must not itself be a size mismatch).  Long values
(bucket layouts of big models, weight matrices) travel as a SHA-256 prefix.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Optional

import torch

__all__ = ["ConfigMismatch", "agree", "describe", "FINGERPRINT_BYTES"]

FINGERPRINT_BYTES = 4096
_MAGIC = b"MKFP1\n"
_LONG = 160  # JSON characters above which a value (not a message) travels as its hash
_MESSAGE = 400  # strings are messages: cut to this many characters, never hashed


class ConfigMismatch(ValueError):
    """Ranks disagree about their configuration.  ``fields`` maps each differing field
    to {value (as JSON text): [ranks]}."""

    def __init__(self, what: str, fields: dict, rank: int,
                 advice: str = "Start every rank with the same settings."):
        self.fields, self.rank = fields, rank
        parts = []
        for name, groups in fields.items():
            held = "; ".join(f"{_ranks(r)} {'has' if len(r) == 1 else 'have'} {v}"
                             for v, r in sorted(groups.items(), key=lambda kv: kv[1]))
            parts.append(f"{name}: {held}")
        super().__init__(f"rank {rank}: ranks disagree on {what}; " + " | ".join(parts)
                         + (f". {advice}" if advice else ""))


def _ranks(ranks: list) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def describe(obj) -> str:
    """repr(obj) without memory addresses, which differ between processes (a function
    or an object without its own __repr__ would otherwise always 'differ')."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def _text(value) -> str:
    if isinstance(value, str):
        return json.dumps(value if len(value) <= _MESSAGE else value[:_MESSAGE] + "...")
    text = json.dumps(value, sort_keys=True, default=repr)
    if len(text) > _LONG:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return text


def encode(fields: dict) -> torch.Tensor:
    blob = _MAGIC + json.dumps({k: _text(v) for k, v in fields.items()},
                               sort_keys=True).encode()
    if len(blob) > FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint of {len(blob)} bytes exceeds {FINGERPRINT_BYTES}: "
                         f"fields {sorted(fields)}")
    buf = torch.zeros(FINGERPRINT_BYTES, dtype=torch.uint8)
    buf[:len(blob)] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return buf


def decode(buf: torch.Tensor) -> Optional[dict]:
    """The fields of one rank, or None if its buffer is not a fingerprint (a rank
    running another program or version)."""
    raw = bytes(buf.cpu().numpy().tobytes()).rstrip(b"\0")
    if not raw.startswith(_MAGIC):
        return None
    try:
        return json.loads(raw[len(_MAGIC):].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def compare(fingerprints: list, what: str, rank: int, advice: Optional[str] = None) -> None:
    """Raise ConfigMismatch if the ranks' decoded fingerprints differ."""
    kw = {} if advice is None else {"advice": advice}
    foreign = [r for r, f in enumerate(fingerprints) if f is None]
    if foreign:
        raise ConfigMismatch(what, {"program": {"not a moniqua_kernels fingerprint": foreign}},
                             rank, **kw)
    diff = {}
    for name in sorted(set().union(*fingerprints)):
        groups: dict = {}
        for r, f in enumerate(fingerprints):
            groups.setdefault(f.get(name, "(missing)"), []).append(r)
        if len(groups) > 1:
            diff[name] = groups
    if diff:
        raise ConfigMismatch(what, diff, rank, **kw)


def agree(transport, fields: dict, what: str = "the gossip configuration",
          device=None, advice: Optional[str] = None) -> None:
    """Every rank calls this with its own ``fields``; one all-gather, then every rank
    raises the same ConfigMismatch if any field differs.  Communication failures raise
    the transport's PeerError (within its timeout)."""
    if transport.world_size == 1:
        return
    buf = encode(fields)
    if device is not None:
        buf = buf.to(device)
    compare([decode(b) for b in transport.all_gather(buf)], what, transport.rank, advice)
