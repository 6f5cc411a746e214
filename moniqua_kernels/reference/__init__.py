"""The pure-torch reference: the executable form of DESIGN.md.

Runs on any device.  Functions here take already-validated arguments (see ops.py)
and are the backend named "reference".
"""
from .moniqua import moniqua_decode, moniqua_encode, moniqua_mix_
from .packing import pack_bits, packed_nbytes, unpack_bits
from .philox import philox_uniform, philox_words
from .qsgd import qsgd_decode, qsgd_encode
from .sign import sign_decode, sign_encode
from .sparse import (randomk_count, randomk_decode, randomk_encode, topk_decode,
                     topk_encode)

__all__ = [
    "philox_uniform", "philox_words", "pack_bits", "unpack_bits", "packed_nbytes",
    "moniqua_encode", "moniqua_decode", "moniqua_mix_", "qsgd_encode", "qsgd_decode",
    "sign_encode", "sign_decode", "randomk_encode", "randomk_decode", "randomk_count",
    "topk_encode", "topk_decode",
]
