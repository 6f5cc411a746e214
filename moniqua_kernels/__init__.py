"""moniqua_kernels: compressed communication for decentralized SGD.

Kernels (Moniqua modulo quantization, QSGD, scaled sign, random/top-k) as torch custom
ops with a pure-torch reference, plus compressor objects.  Import is light: backends
(native extension, Triton) load on first use.
"""
from . import compressors
from . import gossip  # mk.gossip.<Algorithm>; cheap, torch already loads distributed
from .backends import (BackendUnavailableError, available, get_backend, set_backend,
                       use_backend)
from .ops import (KernelInputError, check_errors, moniqua_decode, moniqua_delta,
                  moniqua_encode, moniqua_mix_, moniqua_modulus, pack_bits, philox_uniform,
                  qsgd_decode, qsgd_elias_decode, qsgd_elias_encode, qsgd_encode,
                  randomk_count, randomk_decode, randomk_encode, sign_decode, sign_encode,
                  topk_decode, topk_encode, unpack_bits)

__version__ = "0.1.0"

__all__ = [
    "compressors", "gossip", "BackendUnavailableError", "available", "get_backend", "set_backend",
    "use_backend", "KernelInputError", "check_errors", "philox_uniform", "pack_bits", "unpack_bits", "moniqua_delta",
    "moniqua_modulus", "moniqua_encode", "moniqua_decode", "moniqua_mix_", "qsgd_encode",
    "qsgd_decode", "qsgd_elias_encode", "qsgd_elias_decode", "sign_encode", "sign_decode", "randomk_count", "randomk_encode",
    "randomk_decode", "topk_encode", "topk_decode",
]
