"""Triton kernels: the fast path on NVIDIA GPUs, bit-exact with the reference.

One module per op family (kernels ``_name_kernel``, launchers ``name_triton``); each
launcher takes exactly its op's schema arguments (ops/_table.py) and is registered as
the op's "triton" kernel when this package is first needed.  On CPU tensors the kernels
run only through Triton's interpreter (TRITON_INTERPRET=1, set before this package is
imported), which is how the tests exercise them without a GPU.
"""
try:
    import triton  # noqa: F401
    import triton.language as _tl
except ImportError as exc:  # the registry turns this into the backend's refusal reason
    raise ImportError(f"the Triton backend needs the triton package ({exc})") from exc

if not hasattr(_tl, "randint4x") or not hasattr(_tl, "join"):
    raise ImportError("the Triton backend needs triton >= 3.0 (tl.randint4x, tl.join)")

from .. import backends  # noqa: E402
from ._common import on_tensor_device  # noqa: E402
from .moniqua import (moniqua_decode_triton, moniqua_encode_triton,  # noqa: E402
                      moniqua_mix_triton)
from .packing import pack_bits_triton, philox_uniform_triton, unpack_bits_triton  # noqa: E402
from .qsgd import qsgd_decode_triton, qsgd_encode_triton  # noqa: E402
from .sign import sign_decode_triton, sign_encode_triton  # noqa: E402
from .sparse import (randomk_count_triton, randomk_decode_triton,  # noqa: E402
                     randomk_encode_triton)

LAUNCHERS = {
    "moniqua_encode": moniqua_encode_triton,
    "moniqua_decode": moniqua_decode_triton,
    "moniqua_mix_": moniqua_mix_triton,
    "qsgd_encode": qsgd_encode_triton,
    "qsgd_decode": qsgd_decode_triton,
    "sign_encode": sign_encode_triton,
    "sign_decode": sign_decode_triton,
    "randomk_encode": randomk_encode_triton,
    "randomk_decode": randomk_decode_triton,
    "randomk_count": randomk_count_triton,
    "philox_uniform": philox_uniform_triton,
    "pack_bits": pack_bits_triton,
    "unpack_bits": unpack_bits_triton,
}

# Each launcher runs with its tensors' CUDA device current (see on_tensor_device).
for _name, _launcher in LAUNCHERS.items():
    backends.register_kernel(_name, "triton", on_tensor_device(_launcher))
