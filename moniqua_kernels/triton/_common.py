"""Pieces every Triton kernel of the package shares: launch options, the Philox block,
the wire-layout packing, and the launch geometry.

Block geometry.  Every elementwise kernel gives one program BLOCK consecutive elements
(a multiple of 8, so a program owns whole output bytes at every bit width and packing
needs no atomics).  BLOCK = 4096 with 8 warps is 16 elements per thread: four 16-byte
fp32 loads in flight per thread, the usual shape of a bandwidth-bound Triton kernel.
It is NOT a measured optimum: no GPU was lent while this was written; the benchmark
harness (benchmarks/bench_ops.py) is where a change of it must be justified.
Under TRITON_INTERPRET=1 the interpreter runs one numpy evaluation per program, so a
large block also keeps the CPU tests fast.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK = 4096
NUM_WARPS = 8

# Every launch: no multiply-add contraction, so each float32 product and sum rounds on
# its own exactly as in the reference (DESIGN.md section 4).  Triton 3.x takes the
# option per launch; it defaults to fusing when not given.
LAUNCH = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}

ROUNDING_IDS = {"stochastic": 0, "nearest": 1, "dither": 2}  # stochastic: the default path
NEAREST: tl.constexpr = tl.constexpr(1)
DITHER: tl.constexpr = tl.constexpr(2)


def on_tensor_device(launcher):
    """Run a launcher with the CUDA device of its tensors current: Triton launches on the
    current device, which is not necessarily the one the tensors live on."""
    @functools.wraps(launcher)
    def wrapped(*args, **kwargs):
        for a in args:
            device = a.device if isinstance(a, torch.Tensor) else a
            if isinstance(device, torch.device):
                if device.type == "cuda":
                    with torch.cuda.device(device):
                        return launcher(*args, **kwargs)
                break
        return launcher(*args, **kwargs)
    return wrapped


def grid_for(n: int, block: int = BLOCK) -> tuple[int]:
    return (triton.cdiv(n, block),)


def f32(value: float) -> float:
    """value rounded to float32 (round to nearest even) on the host, as the reference does
    with torch.tensor(value, dtype=float32); the kernel then receives it exactly."""
    return float(torch.tensor(value, dtype=torch.float32))


@triton.jit
def block_start(BLOCK: tl.constexpr):
    """int64 index of this program's first element: n > 2^31 must not overflow."""
    return tl.program_id(0).to(tl.int64) * BLOCK


@triton.jit
def load_tail(ptr, start, n, BLOCK: tl.constexpr):
    """ptr[start : start + BLOCK], zeros past n.  Only the last, partial block is masked:
    a mask that is not constant over 16 bytes stops 128-bit loads unless n happens to be
    a multiple of 16, and tensor sizes in training are arbitrary.  (Checked in the PTX
    by tests/test_triton_compile.py.)"""
    i = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        value = tl.load(ptr + i)
    else:
        value = tl.load(ptr + i, mask=i < n, other=0)
    return value


@triton.jit
def store_tail(ptr, value, start, n, BLOCK: tl.constexpr):
    """ptr[start : start + BLOCK] = value, clipped at n; masked only in the last block."""
    i = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        tl.store(ptr + i, value)
    else:
        tl.store(ptr + i, value, mask=i < n)


@triton.jit
def philox_block(seed, offset, start, BLOCK: tl.constexpr):
    """uint32 Philox words for positions offset + start + [0, BLOCK); start % 4 == 0.

    One Philox call per 4 positions: counter c = p >> 2 (int64, so randint4x splits it
    into c0 = low, c1 = high 32 bits), the four words interleaved back into position
    order.  offset is a multiple of 4 and BLOCK of 8, so word p & 3 lands on lane i & 3.
    seed is cast to int64 (value preserving) so that randint4x's uint64 view of it is
    the seed's 64 bits: key k0 = low, k1 = high half.
    """
    counter = (tl.cast(offset, tl.int64) >> 2) + (start >> 2) + tl.arange(0, BLOCK // 4)
    r0, r1, r2, r3 = tl.randint4x(tl.cast(seed, tl.int64), counter)
    # join(join(r0, r2), join(r1, r3))[c, m, k] = r_{2m+k}: row-major is r0 r1 r2 r3.
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK,))


@triton.jit
def uniform_from_words(words):
    """u = (word >> 8) * 2^-24: a 24-bit integer times a power of two, exact in float32."""
    return (words >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def pack_codes(codes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """BLOCK int32 codes (< 2^BITS, zero past the end) -> BLOCK*BITS/8 int32 bytes.

    Element m of a byte sits at bits [m*BITS, (m+1)*BITS); the fields are disjoint,
    so the sum over a byte's elements is their bitwise OR.
    """
    PER_BYTE: tl.constexpr = 8 // BITS
    shift = (tl.arange(0, BLOCK) % PER_BYTE) * BITS
    return tl.sum(tl.reshape(codes << shift, (BLOCK // PER_BYTE, PER_BYTE)), axis=1)


@triton.jit
def load_codes(payload_ptr, start, nbytes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """The BLOCK int32 codes of elements start + [0, BLOCK), start % 8 == 0; each byte is
    read once and spread over its elements."""
    PER_BYTE: tl.constexpr = 8 // BITS
    byte = load_tail(payload_ptr, start // PER_BYTE, nbytes, BLOCK // PER_BYTE).to(tl.int32)
    spread = tl.reshape(tl.broadcast_to(byte[:, None], (BLOCK // PER_BYTE, PER_BYTE)), (BLOCK,))
    shift = (tl.arange(0, BLOCK) % PER_BYTE) * BITS
    return (spread >> shift) & ((1 << BITS) - 1)


@triton.jit
def store_bytes(out_ptr, packed, start, nbytes, BITS: tl.constexpr, BLOCK: tl.constexpr):
    """Store the bytes of elements start + [0, BLOCK) (start % 8 == 0: whole bytes)."""
    PER_BYTE: tl.constexpr = 8 // BITS
    store_tail(out_ptr, packed.to(tl.uint8), start // PER_BYTE, nbytes, BLOCK // PER_BYTE)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """float32 x rounded to nearest even in dtype (float32, float16 or bfloat16).

    bfloat16 is rounded with integer arithmetic: the GPU's cvt.rn.bf16 gives the same
    bits, but Triton's interpreter truncates (triton 3.9 interpreter's fp32 -> bf16 cast
    drops the low half), and the tests run there.  NaN stays a quiet NaN.
    """
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        half = tl.where(x != x, (bits >> 16) | 0x40, rounded)
        return half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
