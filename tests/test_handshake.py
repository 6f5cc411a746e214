"""Workers agree before they talk: a rank with another configuration makes every rank
raise one ConfigMismatch naming the field and the ranks, in well under the timeout,
never a gloo abort (another size) or silent corruption (another theta, seed, ...)."""
import time

import pytest
import torch

from dist_helpers import run_ranks
from moniqua_kernels import data, gossip
from moniqua_kernels.gossip import handshake

TIMEOUT = 60.0
BASE = dict(algorithm="moniqua", bits=1, theta=0.1, rounding="dither", seed=0,
            topology="ring", hidden=8, sync_params=True)
# (field the error must name, the rank that differs, its setting)
CASES = [
    ("bits", 1, {"bits": 2}),
    ("buckets", 2, {"hidden": 9}),              # another model size
    ("theta", 3, {"theta": 0.2}),
    ("rounding", 1, {"rounding": "nearest"}),
    ("seed", 2, {"seed": 1}),
    ("topology", 0, {"topology": "complete"}),
    ("algorithm", 3, {"algorithm": "choco"}),
    ("sync_params", 1, {"sync_params": False}),  # was a timeout, or gloo's size abort
]


def _build(cfg, transport=None):
    model = data.make_model("mlp", 8, 3, seed=0, hidden=cfg["hidden"])
    kw = {"topology": cfg["topology"], "seed": cfg["seed"], "timeout": TIMEOUT,
          "sync_params": cfg["sync_params"]}
    if transport is not None:
        kw["transport"] = transport
    if cfg["algorithm"] == "moniqua":
        return gossip.Moniqua(model, bits=cfg["bits"], theta=cfg["theta"],
                              rounding=cfg["rounding"], **kw)
    return gossip.Choco(model, compressor="sign", **kw)


def _misconfigured(rank, world):
    """Every case in turn in one process group; each rank returns what it raised."""
    out = []
    for _, odd_rank, change in CASES:
        cfg = {**BASE, **(change if rank == odd_rank else {})}
        t0 = time.monotonic()
        try:
            _build(cfg)
            out.append(("ok", time.monotonic() - t0))
        except handshake.ConfigMismatch as exc:
            out.append((str(exc), time.monotonic() - t0))
    g = _build(BASE)  # agreeing ranks still work afterwards
    g.step()
    out.append(("stepped", g.step_count))
    return out


def test_every_misconfiguration_raises_on_every_rank_naming_field_and_ranks():
    results = run_ranks(_misconfigured, 4, timeout=TIMEOUT)
    for rank, res in enumerate(results):
        assert isinstance(res, list), f"rank {rank}: {res}"
        for (field, odd, _), (msg, elapsed) in zip(CASES, res):
            assert msg.startswith(f"rank {rank}: ranks disagree on the gossip configuration"), \
                (field, msg)
            others = ", ".join(str(r) for r in range(4) if r != odd)
            assert f"{field}: " in msg and f"rank {odd} has" in msg \
                and f"ranks {others} have" in msg, (field, msg)
            assert elapsed < 10, (field, elapsed)  # one all-gather, not a timeout
        assert res[-1] == ("stepped", 1)


def test_mismatch_message_lists_values_and_ranks():
    fps = [{"bits": "1", "seed": "0"}, {"bits": "2", "seed": "0"}, {"bits": "1", "seed": "5"}]
    with pytest.raises(handshake.ConfigMismatch) as info:
        handshake.compare(fps, "the gossip configuration", rank=0)
    msg = str(info.value)
    assert "bits: ranks 0, 2 have 1; rank 1 has 2" in msg
    assert "seed: ranks 0, 1 have 0; rank 2 has 5" in msg
    assert info.value.fields["bits"] == {"1": [0, 2], "2": [1]}
    with pytest.raises(handshake.ConfigMismatch, match="program"):
        handshake.compare([fps[0], None], "x", rank=0)


def test_fingerprint_round_trip_and_size_limit():
    fields = {"bits": 1, "topology": [[0.5] * 40] * 40, "name": "ring"}
    buf = handshake.encode(fields)
    assert buf.numel() == handshake.FINGERPRINT_BYTES and buf.dtype == torch.uint8
    back = handshake.decode(buf)
    assert back["bits"] == "1" and back["topology"].startswith("sha256:")
    assert handshake.decode(torch.zeros(handshake.FINGERPRINT_BYTES, dtype=torch.uint8)) is None
    with pytest.raises(ValueError, match="exceeds"):
        handshake.encode({f"f{i}": i for i in range(1000)})


def test_describe_drops_addresses():
    def sched(step):
        return 0.1
    assert " at 0x" not in handshake.describe(sched)
    assert handshake.describe(sched) == handshake.describe(sched)
