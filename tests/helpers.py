"""Small utilities shared by the tests (inputs with a known bound, tolerances)."""
import contextlib

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS32 = torch.finfo(torch.float32).eps


def moniqua_modes():
    """Every allowed (bits, rounding) pair."""
    return [(b, r) for b in (1, 2, 4, 8) for r in ("stochastic", "nearest", "dither")
            if not (r == "stochastic" and b == 1)]


def pair_within(n, dtype, spread=20.0, theta=0.5, seed=0, shape=None):
    """x and y of dtype with |x - y| <= theta (checked in float32), x spanning many
    wraps of the modulus.  Returns (x, y, theta_actual)."""
    g = torch.Generator().manual_seed(seed)
    x = ((torch.rand(n, generator=g) * 2 - 1) * spread).to(dtype)
    noise = (torch.rand(n, generator=g) * 2 - 1) * (0.9 * theta)
    y = (x.float() + noise).to(dtype)
    gap = (x.float() - y.float()).abs().max().item() if n else 0.0
    # A strict bound: with |x - y| = theta exactly and a nearest-rounding tie, the
    # centred mod sees exactly B/2 and may pick the other end of its interval.
    theta_actual = max(gap * (1 + 2 ** -8), 1e-3)
    if shape is not None:
        x, y = x.reshape(shape), y.reshape(shape)
    return x, y, theta_actual


def decode_tolerance(x, y, modulus, delta):
    """Per-element bound on |decode - x|: delta*B (the guarantee), plus half an ulp of
    the output dtype (decode rounds its float32 result to y's dtype), plus 4 float32
    ulps of max(|y|, B) for the ~6 rounded float32 operations of the decode."""
    xf, yf = x.float(), y.float()
    # |decoded| <= |x| + delta*B, and half an ulp of v is at most eps*|v|/2.
    dtype_half_ulp = 0.5 * torch.finfo(y.dtype).eps * (xf.abs() + delta * modulus)
    if y.dtype == torch.float32:
        dtype_half_ulp = torch.zeros_like(xf)
    float_slack = 4 * EPS32 * torch.maximum(yf.abs(), torch.full_like(yf, modulus))
    return delta * modulus + dtype_half_ulp + float_slack


@contextlib.contextmanager
def torch_threads(threads):
    """torch's intra-op thread count set to `threads` inside, restored after (the native
    CPU kernels split their blocks over them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
