"""Moniqua modulo quantization (DESIGN.md section 4), the executable spec.

All arithmetic is float32 with one rounding per operation, in the order written;
torch's eager kernels never contract a multiply and an add, so these lines are the
reference that native and Triton kernels reproduce bit for bit.
"""
from __future__ import annotations

import torch

from .packing import pack_bits, unpack_bits
from .philox import philox_uniform

ROUNDINGS = ("stochastic", "nearest", "dither")


def modulus_constants(modulus: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, invB) as float32 scalars: B rounded to float32, invB = 1.0f / B (IEEE division)."""
    b32 = torch.tensor(modulus, dtype=torch.float32, device=device)
    inv_b = torch.tensor(1.0, dtype=torch.float32, device=device) / b32
    return b32, inv_b


def encode_codes(x: torch.Tensor, modulus: float, bits: int, rounding: str,
                 seed: int, offset: int) -> torch.Tensor:
    """Codes k in [0, 2^bits) (uint8, flat, row-major) before packing."""
    xf = x.reshape(-1).to(torch.float32)
    b32, inv_b = modulus_constants(modulus, xf.device)
    t = xf * inv_b
    # z = t - floor(t) is exact; it can round up to 1.0 for tiny negative t, which the
    # final "mod 2^b" folds back to code 0.  A non-finite t (only reachable with the
    # finite check turned off, or by overflow of x * invB) is defined to give z = 0.
    z = torch.where(torch.isfinite(t), t - torch.floor(t), torch.zeros_like(t))
    if rounding == "nearest":
        u = torch.full_like(z, 0.5)
    else:
        u = philox_uniform(xf.numel(), seed, offset, xf.device)
    w = z * float(1 << bits) + u
    return (torch.floor(w).to(torch.int64) % (1 << bits)).to(torch.uint8)


def moniqua_encode(x: torch.Tensor, modulus: float, bits: int, rounding: str,
                   seed: int, offset: int) -> torch.Tensor:
    return pack_bits(encode_codes(x, modulus, bits, rounding, seed, offset), bits)


def _decode_flat(payload: torch.Tensor, yf: torch.Tensor, b32: torch.Tensor,
                 inv_b: torch.Tensor, bits: int, rounding: str, seed: int,
                 offset: int) -> torch.Tensor:
    """Decoded float32 values against a flat float32 reference yf."""
    k = unpack_bits(payload, bits, yf.numel()).to(torch.float32)
    if rounding == "dither":
        c = 0.5 - philox_uniform(yf.numel(), seed, offset, yf.device)  # exact
        k = k + c
    zh = k * (2.0 ** -bits)  # exact scaling by a power of two
    a = zh * b32 - yf
    return yf + (a - b32 * torch.floor(a * inv_b + 0.5))


def moniqua_decode(payload: torch.Tensor, reference: torch.Tensor, modulus: float,
                   bits: int, rounding: str, seed: int, offset: int) -> torch.Tensor:
    yf = reference.reshape(-1).to(torch.float32)
    b32, inv_b = modulus_constants(modulus, yf.device)
    xh = _decode_flat(payload, yf, b32, inv_b, bits, rounding, seed, offset)
    return xh.to(reference.dtype).reshape(reference.shape)


def moniqua_mix_(x: torch.Tensor, payloads: list[torch.Tensor], weights: list[float],
                 own_payload: torch.Tensor, modulus: float, bits: int, rounding: str,
                 gamma: float, seeds: list[int], offsets: list[int]) -> None:
    """x <- x + gamma * sum_j w_j (dec(q_j; x) - dec(q_self; x)), in place.

    seeds[j], offsets[j] are the streams of payloads[j]; the last entry of each list is
    the stream of own_payload.  The sum runs left to right from 0 in float32:
    acc <- acc + w_j * (d_j - d_self), then x <- x + gamma * acc.
    """
    xf = x.reshape(-1).to(torch.float32)
    b32, inv_b = modulus_constants(modulus, xf.device)
    d_self = _decode_flat(own_payload, xf, b32, inv_b, bits, rounding, seeds[-1], offsets[-1])
    acc = torch.zeros_like(xf)
    for j, payload in enumerate(payloads):
        d_j = _decode_flat(payload, xf, b32, inv_b, bits, rounding, seeds[j], offsets[j])
        w_j = torch.tensor(weights[j], dtype=torch.float32, device=xf.device)
        acc = acc + w_j * (d_j - d_self)
    g = torch.tensor(gamma, dtype=torch.float32, device=xf.device)
    x.copy_((xf + g * acc).reshape(x.shape).to(x.dtype))
