"""The reference as a backend: OPS maps op names to the spec functions."""
from . import moniqua, packing, philox, qsgd, sign, sparse


def _philox_uniform(n, seed, offset, device):
    return philox.philox_uniform(n, seed, offset, device)


def _randomk_count(n, ratio, seed, offset, device):
    import torch
    return sparse.randomk_mask(n, ratio, seed, offset, device).sum().to(torch.int64)


OPS = {
    "philox_uniform": _philox_uniform,
    "pack_bits": lambda codes, bits: packing.pack_bits(codes, bits),
    "unpack_bits": packing.unpack_bits,
    "moniqua_encode": moniqua.moniqua_encode,
    "moniqua_decode": moniqua.moniqua_decode,
    "moniqua_mix_": moniqua.moniqua_mix_,
    "qsgd_encode": qsgd.qsgd_encode,
    "qsgd_decode": qsgd.qsgd_decode,
    "sign_encode": sign.sign_encode,
    "sign_decode": sign.sign_decode,
    "randomk_encode": sparse.randomk_encode,
    "randomk_decode": sparse.randomk_decode,
    "randomk_count": _randomk_count,
    "topk_encode": sparse.topk_encode,
    "topk_decode": sparse.topk_decode,
}
