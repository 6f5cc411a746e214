"""The ops of the package: the op table (_table.py: each op declared once with its
schema and reference kernel), validation (_validate.py), error flags (_errors.py) and
the public wrappers (api.py), re-exported here and from moniqua_kernels.
"""
from ._errors import KernelInputError, check_errors
from .api import (moniqua_decode, moniqua_delta, moniqua_encode, moniqua_mix_,
                  moniqua_modulus, pack_bits, philox_uniform, qsgd_decode, qsgd_elias_decode,
                  qsgd_elias_encode, qsgd_encode, randomk_count, randomk_decode, randomk_encode, sign_decode, sign_encode,
                  topk_decode, topk_encode, unpack_bits)
from ._table import NAMESPACE, OPS

__all__ = [
    "KernelInputError", "check_errors", "NAMESPACE", "OPS", "moniqua_decode",
    "moniqua_delta", "moniqua_encode", "moniqua_mix_", "moniqua_modulus", "pack_bits",
    "philox_uniform", "qsgd_decode", "qsgd_elias_decode", "qsgd_elias_encode", "qsgd_encode", "randomk_count", "randomk_decode",
    "randomk_encode", "sign_decode", "sign_encode", "topk_decode", "topk_encode",
    "unpack_bits",
]
