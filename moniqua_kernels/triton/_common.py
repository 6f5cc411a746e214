"""Pieces every Triton kernel of the package shares: launch options, the stream and its
Philox block, the wire-layout packing, the split launch, and the error flags.

Block geometry.  Every elementwise kernel gives one program BLOCK consecutive elements
(a multiple of 8, so a program owns whole output bytes at every bit width and packing
needs no atomics).  BLOCK = 4096 with 8 warps is 16 elements per thread: four 16-byte
fp32 loads in flight per thread.  Under TRITON_INTERPRET=1 the interpreter runs one
numpy evaluation per program, so a large block also keeps the CPU tests fast.

Split launches.  The full blocks run with MASKED=False (no mask and no branch: a mask
that is not constant over 16 bytes stops 128-bit accesses, and a runtime branch per
block costs registers, 64 against 40 for the 1-bit encode in the static review), and
the partial last block, if any, as a second launch of one program with MASKED=True.

Specialisation.  Triton specialises integer arguments on their value (divisible by 16,
equal to 1) and on their type (i32 when the value fits, else i64).  A seed derived
anew every step would then compile a new kernel at a random step, inside a CUDA graph
capture too (seen on an H100: 4 extra compiles for 4 seeds and sizes).  So the stream
travels as four int32 values (key halves, counter halves), and every per-call integer
is in do_not_specialize.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

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

# COMPILED: the kernels are compiled for the GPU, not run by Triton's interpreter (the CPU
# tests).  Two paths take the GPU's own instructions then, with the same bits as the
# interpreter's path (the GPU script's parity tests check them):
# - Philox's 32x32 -> 64-bit products as one mul.wide.u32 (inline PTX) instead of the
#   mul.hi and mul.lo that tl.randint4x emits.  Counted in the sm_90 SASS of the 1-bit
#   dither fp32 encode (Triton 3.9): 40.0 instructions per element with randint4x, 35.5
#   with mul.wide; the 2-neighbour bf16 mix 130.5 -> 116.5.  The interpreter cannot
#   run PTX and keeps umulhi.
# - bfloat16 rounding (round_to) by cvt.rn.bf16x2.f32, two elements an instruction.
COMPILED: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")
PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
# {hi, lo} = a * M: mov.b64 {x, y} puts the low word in x.
_MUL_WIDE = "{{ .reg .b64 t; mul.wide.u32 t, $2, {}; mov.b64 {{$1, $0}}, t; }}"
MUL_WIDE_M0: tl.constexpr = tl.constexpr(_MUL_WIDE.format(0xD2511F53))
MUL_WIDE_M1: tl.constexpr = tl.constexpr(_MUL_WIDE.format(0xCD9E8D57))

# Flag slots (ops/_errors.py).
NON_FINITE: tl.constexpr = tl.constexpr(0)
BAD_STREAM: tl.constexpr = tl.constexpr(1)
PADDING: tl.constexpr = tl.constexpr(2)

# The per-call integers (see Specialisation above).
NO_SPECIALIZE = ["k0", "k1", "c0", "c1", "k0s", "k1s", "c0s", "c1s", "n", "nbytes", "d",
                 "first_block"]


def jit(fn):
    """triton.jit with the package's per-call integers unspecialised (those fn has)."""
    import inspect
    names = [a for a in inspect.signature(fn).parameters if a in NO_SPECIALIZE]
    return triton.jit(do_not_specialize=names)(fn)


def _int32(v: int) -> int:
    """The signed 32-bit integer with v's low 32 bits."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def stream_args(seed, offset) -> tuple[int, int, int, int]:
    """(k0, k1, c0, c1) as int32: the seed's 64 bits in halves, and the halves of the
    first Philox counter offset / 4."""
    seed, counter = int(seed) & 0xFFFFFFFFFFFFFFFF, int(offset) >> 2
    return _int32(seed), _int32(seed >> 32), _int32(counter), _int32(counter >> 32)


def tuple_halves(seed, offset) -> tuple[int, int, int, int]:
    """stream_args for a tuple argument (the mix's streams).  Triton (3.6, seen on an H100)
    specialises the ints inside a tuple whatever do_not_specialize says: a half equal
    to 1 became a constexpr (and broke the kernel), one divisible by 16 a new compile.
    So each half travels as (1 << 40) | half << 4 | 3: always i64, never 1, never a
    multiple of 16, one compiled kernel for every stream.  unpack_half reverses it."""
    return tuple((1 << 40) | ((h & 0xFFFFFFFF) << 4) | 3 for h in stream_args(seed, offset))


def split_launch(kernel, n: int, block: int, *args, masked_only: bool = False,
                 tile: Optional[int] = None, **meta) -> None:
    """kernel over the full blocks of n (MASKED=False), then the partial block
    (MASKED=True, one program).  The kernel's last argument, first_block, is appended
    here.  masked_only (a stream tensor, whose offset may be refused): every program
    masked.  tile: the kernel's BLOCK, where it is not the block (QSGD: a power-of-two
    tile holding one bucket of `block` elements)."""
    full = n // block
    meta = dict(meta, BLOCK=block if tile is None else tile)
    if masked_only:
        kernel[(triton.cdiv(n, block),)](*args, 0, MASKED=True, **meta)
        return
    if full:
        kernel[(full,)](*args, 0, MASKED=False, **meta)
    if n % block:
        kernel[(1,)](*args, full, MASKED=True, **meta)


def on_tensor_device(launcher):
    """Run a launcher with the CUDA device of its tensors current: Triton launches on the
    current device, which is not necessarily the one the tensors live on."""
    @functools.wraps(launcher)
    def wrapped(*args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                if a.is_cuda and a.device.index != torch.cuda.current_device():
                    with torch.cuda.device(a.device):
                        return launcher(*args, **kwargs)
                break
        return launcher(*args, **kwargs)
    return wrapped


def f32(value: float) -> float:
    """value rounded to float32 (round to nearest even) on the host, as the reference does
    with torch.tensor(value, dtype=float32); the kernel then receives it exactly."""
    return float(torch.tensor(value, dtype=torch.float32))


# ------------------------------------------------------------------- device helpers

@triton.jit
def block_range(first_block, BLOCK: tl.constexpr):
    """(start, indices) of this program's elements, int64 (n > 2^31 must not overflow)."""
    start = (tl.program_id(0) + first_block).to(tl.int64) * BLOCK
    return start, start + tl.arange(0, BLOCK)


@triton.jit
def load_block(ptr, i, n, MASKED: tl.constexpr):
    """ptr[i], zeros at i >= n (MASKED)."""
    if MASKED:
        return tl.load(ptr + i, mask=i < n, other=0)
    else:
        return tl.load(ptr + i)


@triton.jit
def only_if(ok, mask):
    """mask where ok (a scalar read from the stream tensor), else all False.  Not
    `mask & ok`: Triton 3.9's interpreter splats a loaded int1 scalar as int8, and the
    store then refuses the mask ("mask has unsupported dtype"); compiled, both are one
    predicate AND."""
    return tl.where(ok, mask, False)


@triton.jit
def store_block(ptr, i, value, n, ok, MASKED: tl.constexpr):
    """ptr[i] = value where i < n and ok (MASKED; ok is False for a refused stream)."""
    if MASKED:
        tl.store(ptr + i, value, mask=only_if(ok, i < n))
    else:
        tl.store(ptr + i, value)


@triton.jit
def unpack_half(v):
    """The 32-bit half packed by tuple_halves, as an int64 in [0, 2^32)."""
    return (v.to(tl.int64) >> 4) & 0xFFFFFFFF


@triton.jit
def stream_of(k0, k1, c0, c1, stream_ptr, flag_ptr):
    """(seed, first counter, ok) of the call: from the int32 halves, or read from the
    stream tensor {seed, offset}, whose offset must be a non-negative multiple of 4 (else
    ok is False, flagged once by program 0, and nothing is written)."""
    if stream_ptr is not None:
        seed = tl.load(stream_ptr)
        offset = tl.load(stream_ptr + 1)
        bad = (offset < 0) | ((offset & 3) != 0)
        if flag_ptr is not None:
            if (tl.program_id(0) == 0) & bad:
                tl.atomic_add(flag_ptr + BAD_STREAM, 1)
        return seed, offset >> 2, bad == 0
    else:
        seed = (k1.to(tl.int64) << 32) | (k0.to(tl.int64) & 0xFFFFFFFF)
        counter = (c1.to(tl.int64) << 32) | (c0.to(tl.int64) & 0xFFFFFFFF)
        return seed, counter, True


@triton.jit
def _mulhilo(a, M: tl.constexpr, ASM: tl.constexpr):
    """(hi, lo) 32-bit halves of the 64-bit product a * M (a uint32); ASM: the PTX."""
    if COMPILED:
        return tl.inline_asm_elementwise(asm=ASM, constraints="=r,=r,r", args=[a],
                                         dtype=(tl.uint32, tl.uint32), is_pure=True, pack=1)
    else:
        return tl.umulhi(a, M), a * M


@triton.jit
def philox4x32_10(c0, c1, k0, k1):
    """Philox4x32-10 (DESIGN.md section 3) on counters (c0, c1, 0, 0), key (k0, k1)."""
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0, MUL_WIDE_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1, MUL_WIDE_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def philox_block(seed, counter, start, BLOCK: tl.constexpr):
    """uint32 Philox words for positions 4*counter + start + [0, BLOCK); start % 4 == 0.

    One Philox call per 4 positions: counter c (int64: c0 = low, c1 = high 32 bits), the
    four words interleaved back into position order.  seed is int64: its 64 bits are the
    key (k0 low, k1 high half).  The same words as tl.randint4x(seed, c).
    """
    c = counter + (start >> 2) + tl.arange(0, BLOCK // 4)
    key = seed.to(tl.uint64, bitcast=True)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    cu = c.to(tl.uint64, bitcast=True)
    r0, r1, r2, r3 = philox4x32_10((cu & 0xFFFFFFFF).to(tl.uint32), (cu >> 32).to(tl.uint32),
                                   k0, k1)
    # join(join(r0, r2), join(r1, r3))[c, m, k] = r_{2m+k}: row-major is r0 r1 r2 r3.
    return tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK,))


@triton.jit
def uniform_from_words(words):
    """u = (word >> 8) * 2^-24: a 24-bit integer times a power of two, exact in float32."""
    return (words >> 8).to(tl.float32) * 5.9604644775390625e-08


@triton.jit
def count_bad(flag_ptr, bad, SLOT: tl.constexpr):
    """Add the number of True in bad to a flag slot: one atomic per program, and only
    when there is something to add."""
    count = tl.sum(bad.to(tl.int32), axis=0)
    if count > 0:
        tl.atomic_add(flag_ptr + SLOT, count.to(tl.int64))


@triton.jit
def flag_non_finite(flag_ptr, v, inside):
    """Add the number of non-finite v where inside to the NON_FINITE slot.  The sum of v
    over the program is inf or NaN when any v is (one add an element); only then are they
    counted, element by element (v - v is NaN exactly where v is inf or NaN).  A sum of
    finite values that overflows only sends its program to that exact count, which adds
    nothing.  The count's test is not written |v| < inf: the encode's `finite` is that
    expression, and sharing it made the compiler test every element in integer form on
    the clean path (one more instruction an element).
    sm_90 instructions an element that a program with clean data runs beyond the
    unchecked kernel (the 1-bit encode and decode cases of benchmarks/sass_static.py,
    counted up to the probe's exit): counting in every program (a compare, a select, an
    add and an integer reduction) 4.5-8; the sum of v * 0 (a multiply and an add an
    element) 3.7-5.6 with Triton 3.6 (the GPU runs' version), 2.4-3.8 with 3.9; this sum
    2.75-3.8 and 1.5-2.1: about one add an element, the rest the reduction across the
    program's threads and warps.  That cost is what the default check adds
    where a kernel is issue-bound: GPU run 3 (H200) timed the public encode with the sum
    of v * 0 at 1.0-1.33x its unchecked time (1.33x at 1 bit, nearest, bf16, about 15
    instructions an element unchecked).  A NaN-keeping max (tl.reduce with
    tl.maximum(propagate_nan=ALL): one FMNMX.NAN an element) is no cheaper than this sum,
    and Triton's interpreter runs a custom reduction element by element, ~100x slower at
    4096 elements, which made the CPU test lane 150 s longer."""
    if not all_finite(v):
        count_non_finite(flag_ptr, v, inside)


@triton.jit
def all_finite(v):
    """True when the sum of v over the program is finite, so every v is (flag_non_finite)."""
    return tl.abs(tl.sum(v, axis=0)) < float("inf")


@triton.jit
def count_non_finite(flag_ptr, v, inside):
    """The exact count behind all_finite's probe (flag_non_finite)."""
    count_bad(flag_ptr, ~(v - v == 0.0) & inside, NON_FINITE)


@triton.jit
def check_padding(payload_ptr, n, nbytes, flag_ptr, BITS: tl.constexpr, MASKED: tl.constexpr):
    """Flag non-zero bits above the codes in the payload's last byte; the program of the
    partial block does it (when n fills whole blocks, n * BITS fills whole bytes)."""
    if MASKED:
        if flag_ptr is not None:
            used = (n * BITS) % 8
            if used != 0:
                last = tl.load(payload_ptr + nbytes - 1).to(tl.int32)
                if (last >> used) != 0:
                    tl.atomic_add(flag_ptr + PADDING, 1)


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
def load_codes(payload_ptr, start, nbytes, BITS: tl.constexpr, BLOCK: tl.constexpr,
               MASKED: tl.constexpr, UP: tl.constexpr = 0):
    """The BLOCK int32 codes of elements start + [0, BLOCK), start % 8 == 0; each byte is
    read once and spread over its elements.  UP <= 24 (BITS < 8 when UP > 0): the codes
    times 2^UP, shifted there with the byte (in uint32: no signed overflow), one shift
    fewer than shifting the codes after."""
    PER_BYTE: tl.constexpr = 8 // BITS
    j = start // PER_BYTE + tl.arange(0, BLOCK // PER_BYTE)
    byte = load_block(payload_ptr, j, nbytes, MASKED).to(tl.uint32)
    spread = tl.reshape(tl.broadcast_to(byte[:, None], (BLOCK // PER_BYTE, PER_BYTE)), (BLOCK,))
    shift = ((tl.arange(0, BLOCK) % PER_BYTE) * BITS).to(tl.uint32)
    mask: tl.constexpr = ((1 << BITS) - 1) << UP
    return (((spread << UP) >> shift) & mask).to(tl.int32)


@triton.jit
def store_bytes(out_ptr, packed, start, nbytes, ok, BITS: tl.constexpr, BLOCK: tl.constexpr,
                MASKED: tl.constexpr):
    """Store the bytes of elements start + [0, BLOCK) (start % 8 == 0: whole bytes)."""
    PER_BYTE: tl.constexpr = 8 // BITS
    j = start // PER_BYTE + tl.arange(0, BLOCK // PER_BYTE)
    store_block(out_ptr, j, packed.to(tl.uint8), nbytes, ok, MASKED)


@triton.jit
def floor_exact(t):
    """floor(t) for float32 t, subnormals included.

    Compiled, cvt.rmi.f32.f32 without .ftz: tl.floor emits cvt.rmi.ftz.f32.f32 (seen with
    Triton 3.6 and 3.9), which reads a negative subnormal t as -0 and gives -0 where
    floor is -1.  The encoder's z = t - floor(t) is then t, slightly negative, instead of
    1.0, and with u = 0 its code is 2^b - 1 instead of 0 (a negative subnormal x / B whose
    stream position draws u = 0: tests/test_parity.py has one)."""
    if COMPILED:
        return tl.inline_asm_elementwise(asm="cvt.rmi.f32.f32 $0, $1;", constraints="=f,f",
                                         args=[t], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.floor(t)


@triton.jit
def floor_to_int32(w):
    """floor(w) as int32 for float32 w in int32's range, and 0 for a NaN w.

    Compiled, one cvt.rmi.s32.f32, whose NaN result the PTX ISA defines as 0 (an f32
    source and a 32-bit destination; CUDA C++'s __float2int_rd is the same instruction).
    The encoder leans on it: a non-finite t = x / B makes z = t - floor(t), hence w, NaN,
    and its code 0 is what the reference's z = 0 gives (w = u < 1).  Not
    tl.floor(w).to(tl.int32): LLVM's fptosi of a NaN is poison, free to become anything.
    The interpreter selects the 0: numpy's cast of a NaN gives INT_MIN."""
    if COMPILED:
        return tl.inline_asm_elementwise(asm="cvt.rmi.s32.f32 $0, $1;", constraints="=r,f",
                                         args=[w], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return tl.where(w == w, tl.floor(w), 0.0).to(tl.int32)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """float32 x rounded to nearest even in dtype (float32, float16 or bfloat16).  NaN
    stays a quiet NaN with x's sign and high payload bits, as the reference and convert.h
    keep it.

    bfloat16 on the GPU: cvt.rn.bf16x2.f32 (or .bf16.f32), which rounds finite x to
    nearest even but is not specified to keep a NaN's sign and payload, so NaN is put
    back by a select.  sm_90 SASS instructions an element, unchecked, Triton 3.6, before
    (integer rounding) -> after: decode 1 bit nearest 24.4 -> 21.2, dither 38.7 -> 35.3;
    2-neighbour mix 1 bit nearest 57.4 -> 54.2, dither 100.1 -> 97.1.  In Triton's
    interpreter, integer arithmetic: its fp32 -> bf16 cast truncates (Triton 3.9's drops
    the low half).
    """
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        if COMPILED:
            quiet = ((bits >> 16) | 0x40).to(tl.uint16).to(tl.bfloat16, bitcast=True)
            return tl.where(x != x, quiet, x.to(tl.bfloat16, fp_downcast_rounding="rtne"))
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        half = tl.where(x != x, (bits >> 16) | 0x40, rounded)
        return half.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)
