"""Compressor objects over the ops: one interface for every algorithm.

    c = Moniqua(theta=0.5, bits=1, rounding="dither")
    p = c.encode(x, seed=s, offset=0)       # Payload: tensors on the wire + metadata
    xh = c.decode(p, reference=y)           # Moniqua needs the receiver's own y
    c.nbytes(x.numel(), x.dtype, seed=s)    # exact bytes on the wire (== p.nbytes)
    buf = p.to_wire(); c.from_wire(buf, x.shape, x.dtype, seed=s)   # one uint8 buffer

A payload's seed and offset are metadata: in decentralized training both ends derive
them from (run seed, sender, step), so they never travel.  ``stream_span(n)`` is the
number of stream positions an encode of n elements uses, so callers can give
consecutive buckets non-overlapping offsets.

Bounds from the papers, where they give one:
  Moniqua.error_bound()    max |decode - x| = delta * B when |x - y| <= theta
  QSGD.variance_bound(x)   E||Q(x) - x||^2 (Alistarh et al. Lemma 3.1 per bucket)
  *.choco_delta(x)         delta with E||C(x) - x||^2 <= (1 - delta) ||x||^2 (CHOCO-SGD)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import ops
from .ops import _validate
from .reference.packing import packed_nbytes
from .reference.qsgd import qsgd_levels
from .reference.qsgd_elias import elias_max_nbytes
from .reference.sparse import topk_count, topk_index_dtype

Layout = list  # [(name, dtype, numel)], the order of the tensors on the wire


def _round4(n: int) -> int:
    return (n + 3) // 4 * 4


def _numel(shape) -> int:
    return math.prod(shape) if not isinstance(shape, int) else shape


@dataclass
class Payload:
    """What one encode produces: the tensors that travel plus what the receiver knows."""
    compressor: str
    shape: torch.Size
    dtype: torch.dtype
    seed: int
    offset: int
    tensors: dict = field(default_factory=dict)  # name -> tensor, in wire order

    @property
    def n(self) -> int:
        return _numel(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the sum of the payload tensors' sizes."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_wire(self, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """All payload tensors as one flat uint8 buffer, in wire order (written into
        ``out``, a uint8 tensor of nbytes, when given)."""
        parts = [t.reshape(-1).contiguous().view(torch.uint8) for t in self.tensors.values()]
        if out is not None:
            if out.dtype != torch.uint8 or out.numel() != self.nbytes:
                raise ValueError(f"to_wire: out must be uint8 with {self.nbytes} elements, "
                                 f"got {out.dtype} with {out.numel()}")
            return torch.cat(parts, out=out) if parts else out
        if not parts:
            return torch.empty(0, dtype=torch.uint8)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class Compressor:
    """Base class: subclasses implement _encode, _decode and layout."""
    name = "compressor"
    needs_reference = False  # True when decode needs the receiver's own tensor
    unbiased = False
    fixed_size = True        # nbytes(n) is known before encoding (False: QSGD elias)

    def layout(self, n: int, dtype: torch.dtype, seed: int = 0, offset: int = 0) -> Layout:
        raise NotImplementedError

    def stream_span(self, n: int) -> int:
        return _round4(n)

    def nbytes(self, n: int, dtype: torch.dtype = torch.float32, seed: int = 0,
               offset: int = 0) -> int:
        """Exact bytes on the wire for n elements of dtype (seed matters for random-k)."""
        return sum(m * dt.itemsize for _, dt, m in self.layout(n, dtype, seed, offset))

    def bits_per_element(self, n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> float:
        return 8.0 * self.nbytes(n, dtype, seed) / max(n, 1)

    def encode(self, x: torch.Tensor, seed: int = 0, offset: int = 0) -> Payload:
        tensors = self._encode(x, seed, offset)
        return Payload(self.name, x.shape, x.dtype, seed, offset, tensors)

    def decode(self, payload: Payload, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoded tensor, shaped and typed like the encoded one."""
        if payload.compressor != self.name:
            raise ValueError(f"payload was made by {payload.compressor!r}, not {self.name!r}")
        if self.needs_reference and reference is None:
            raise ValueError(f"{self.name} decodes against the receiver's own tensor: "
                             "pass reference=")
        out = self._decode(payload, reference)
        return out.reshape(payload.shape).to(payload.dtype)

    def from_wire(self, buf: torch.Tensor, shape, dtype: torch.dtype, seed: int = 0,
                  offset: int = 0) -> Payload:
        """Rebuild a Payload from to_wire()'s buffer and what the receiver knows."""
        shape = torch.Size([shape]) if isinstance(shape, int) else torch.Size(shape)
        layout = self.layout(_numel(shape), dtype, seed, offset)
        sizes = [m * dt.itemsize for _, dt, m in layout]
        if buf.dtype != torch.uint8 or buf.numel() != sum(sizes):
            raise ValueError(f"{self.name}: wire buffer has {buf.numel()} {buf.dtype} entries, "
                             f"expected {sum(sizes)} uint8 bytes for shape {tuple(shape)}")
        tensors, start = {}, 0
        for (name, dt, m), size in zip(layout, sizes):
            tensors[name] = buf[start:start + size].view(dt)
            start += size
        return Payload(self.name, shape, dtype, seed, offset, tensors)

    def choco_delta(self, x: torch.Tensor) -> Optional[float]:
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Identity(Compressor):
    """Full precision: the values themselves travel."""
    name = "identity"
    unbiased = True

    def layout(self, n, dtype, seed=0, offset=0):
        return [("values", dtype, n)]

    def _encode(self, x, seed, offset):
        # a copy, as every other compressor's payload is: a view of x changed with it
        return {"values": x.reshape(-1).clone()}

    def _decode(self, payload, reference):
        return payload.tensors["values"]

    def choco_delta(self, x):
        return 1.0


class Moniqua(Compressor):
    """Moniqua modulo quantization: x mod B at 1-8 bits, decoded against the receiver's y.

    theta bounds |x - y| elementwise between the sender's x and the receiver's y; the
    modulus is B = moniqua_modulus(theta, bits, rounding) and the decode error is at
    most delta * B.  theta may be changed between steps (schedules).
    """
    name = "moniqua"
    needs_reference = True

    def __init__(self, theta: float, bits: int = 1, rounding: str = "dither"):
        self.bits = bits
        self.rounding = rounding
        self.theta = float(theta)
        self.modulus  # validate now

    @property
    def modulus(self) -> float:
        return ops.moniqua_modulus(self.theta, self.bits, self.rounding)

    @property
    def delta(self) -> float:
        return ops.moniqua_delta(self.bits, self.rounding)

    @property
    def unbiased(self) -> bool:
        return self.rounding in ("stochastic", "dither")

    def error_bound(self) -> float:
        return self.delta * self.modulus

    def layout(self, n, dtype, seed=0, offset=0):
        return [("codes", torch.uint8, packed_nbytes(n, self.bits))]

    def _encode(self, x, seed, offset):
        return {"codes": ops.moniqua_encode(x, self.modulus, self.bits, self.rounding, seed,
                                            offset)}

    def _decode(self, payload, reference):
        if reference.shape != payload.shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} does not match the "
                             f"encoded shape {tuple(payload.shape)}")
        return ops.moniqua_decode(payload.tensors["codes"], reference, self.modulus, self.bits,
                                  self.rounding, payload.seed, payload.offset)


class QSGD(Compressor):
    """Bucketed QSGD with s = 2^(bits-1) - 1 levels and a max or l2 scale per bucket.

    coding: "fixed" packs a bits-wide code per element; "elias" sends only the nonzero
    levels, Elias-coded with their gaps (the paper's coding, reference/qsgd_elias.py):
    the same decoded values, a data-dependent size (payload.nbytes; max_nbytes(n)
    bounds it).  Elias pays off with the l2 scale and few levels; measured sizes are in
    docs/wire-format.md.
    """
    name = "qsgd"
    unbiased = True

    def __init__(self, bits: int = 4, bucket_size: int = 512, norm: str = "max",
                 coding: str = "fixed"):
        _validate.check_qsgd(bits, bucket_size, norm)
        if coding not in ("fixed", "elias"):
            raise ValueError(f"coding={coding!r} is not supported; use 'fixed' or 'elias'")
        self.bits, self.bucket_size, self.norm, self.coding = bits, bucket_size, norm, coding

    @property
    def levels(self) -> int:
        return qsgd_levels(self.bits)

    @property
    def fixed_size(self) -> bool:
        return self.coding == "fixed"

    def _buckets(self, n: int) -> int:
        return (n + self.bucket_size - 1) // self.bucket_size

    def layout(self, n, dtype, seed=0, offset=0):
        if self.coding == "elias":
            raise ValueError("QSGD(coding='elias') payloads have a data-dependent size: use "
                             "payload.nbytes after encoding, or max_nbytes(n) as a bound")
        return [("scales", torch.float32, self._buckets(n)),
                ("codes", torch.uint8, packed_nbytes(n, self.bits))]

    def max_nbytes(self, n: int) -> int:
        """Bytes on the wire for n elements: exact for 'fixed', a bound for 'elias'."""
        if self.coding == "fixed":
            return self.nbytes(n)
        return 4 * self._buckets(n) + elias_max_nbytes(n, self.bits, self.bucket_size)

    def from_wire(self, buf, shape, dtype, seed=0, offset=0):
        if self.coding == "fixed":
            return super().from_wire(buf, shape, dtype, seed, offset)
        shape = torch.Size([shape]) if isinstance(shape, int) else torch.Size(shape)
        head = 4 * self._buckets(_numel(shape))
        if buf.dtype != torch.uint8 or buf.numel() < head:
            raise ValueError(f"qsgd (elias): wire buffer has {buf.numel()} {buf.dtype} "
                             f"entries, fewer than the {head} bytes of scales for shape "
                             f"{tuple(shape)}")
        return Payload(self.name, shape, dtype, seed, offset,
                       {"scales": buf[:head].view(torch.float32), "codes": buf[head:]})

    def _encode(self, x, seed, offset):
        if self.coding == "elias":
            scales, codes = ops.qsgd_elias_encode(x, self.bits, self.bucket_size, self.norm,
                                                  seed, offset)
        else:
            scales, codes = ops.qsgd_encode(x, self.bits, self.bucket_size, self.norm, seed,
                                            offset)
        return {"scales": scales, "codes": codes}

    def _decode(self, payload, reference):
        decode = ops.qsgd_elias_decode if self.coding == "elias" else ops.qsgd_decode
        return decode(payload.tensors["scales"], payload.tensors["codes"], payload.n,
                      self.bits, self.bucket_size)

    def variance_factor(self, n: int) -> float:
        """beta with E||Q(v) - v||^2 <= beta ||v||^2 for any v of n elements (per bucket of
        d = min(n, bucket_size)): l2 scale min(d/s^2, sqrt(d)/s) (Alistarh et al. Lemma
        3.1); max scale min(d/(4 s^2), sqrt(d)/s): each level is a Bernoulli step of N/s
        with variance at most (N/s) min(N/(4s), |v_i|), N <= ||v||_2, ||v||_1 <= sqrt(d)
        ||v||_2."""
        d, s = min(int(n), self.bucket_size), self.levels
        if d == 0:
            return 0.0
        first = d / s ** 2 if self.norm == "l2" else d / (4 * s ** 2)
        return float(min(first, math.sqrt(d) / s))

    def variance_bound(self, x: torch.Tensor) -> float:
        """Upper bound on E||Q(x) - x||^2, summed over buckets.

        l2 scale: min(d/s^2, sqrt(d)/s) ||v||^2 per bucket of d elements (Alistarh et al.,
        Lemma 3.1).  max scale: each element's level is a Bernoulli step of N/s, so its
        variance is at most (N/s)^2 / 4, and a bucket's at most d (N/s)^2 / 4.
        """
        v = x.detach().reshape(-1).double()
        s, total = self.levels, 0.0
        for bucket in v.split(self.bucket_size):
            d = bucket.numel()
            if self.norm == "l2":
                total += min(d / s ** 2, math.sqrt(d) / s) * float(bucket.square().sum())
            else:
                total += d * (float(bucket.abs().max()) / s) ** 2 / 4
        return total


class ScaledSign(Compressor):
    """CHOCO-SGD's sign compressor: mean |x| times the sign, 1 bit per element."""
    name = "sign"

    def layout(self, n, dtype, seed=0, offset=0):
        return [("scale", torch.float32, 1), ("codes", torch.uint8, packed_nbytes(n, 1))]

    def stream_span(self, n):
        return 0

    def _encode(self, x, seed, offset):
        scale, codes = ops.sign_encode(x)
        return {"scale": scale.reshape(1), "codes": codes}

    def _decode(self, payload, reference):
        return ops.sign_decode(payload.tensors["scale"], payload.tensors["codes"], payload.n)

    def choco_delta(self, x):
        """||x||_1^2 / (n ||x||_2^2) (Karimireddy et al. 2019, used by CHOCO-SGD)."""
        v = x.detach().reshape(-1).double()
        sq = float(v.square().sum())
        return 1.0 if sq == 0 else float(v.abs().sum()) ** 2 / (v.numel() * sq)


class RandomK(Compressor):
    """Keep each element with probability ratio (mask regenerated by the receiver).

    The keep probability is ratio rounded up to a multiple of 2^-24 (the stream's
    uniforms); rescale multiplies by 1/ratio, so the rescaled values are unbiased up to
    a relative 1 / (ratio 2^24): 6e-5 at ratio 1e-3, 1.3% at 1e-6.  Ratios below 2^-24
    are refused."""
    name = "randomk"

    def __init__(self, ratio: float, rescale: bool = False):
        self.ratio = _validate.check_ratio(ratio)
        if self.ratio < 2.0 ** -24:
            raise ValueError(f"randomk keeps each element with probability ratio rounded up "
                             f"to a multiple of 2^-24; {ratio!r} is below it (and its 1/ratio "
                             "rescale would be biased)")
        self.rescale = bool(rescale)

    @property
    def unbiased(self) -> bool:
        return self.rescale

    def count(self, n, seed=0, offset=0) -> int:
        return ops.randomk_count(n, self.ratio, seed, offset)

    def layout(self, n, dtype, seed=0, offset=0):
        return [("values", dtype, self.count(n, seed, offset))]

    def _encode(self, x, seed, offset):
        return {"values": ops.randomk_encode(x, self.ratio, seed, offset)}

    def _decode(self, payload, reference):
        return ops.randomk_decode(payload.tensors["values"], payload.n, self.ratio,
                                  payload.seed, payload.offset, self.rescale)

    def choco_delta(self, x):
        return None if self.rescale else self.ratio


class TopK(Compressor):
    """Keep the ceil(ratio * n) entries of largest magnitude: indices and values travel."""
    name = "topk"

    def __init__(self, ratio: float):
        self.ratio = _validate.check_ratio(ratio)

    def stream_span(self, n):
        return 0

    def layout(self, n, dtype, seed=0, offset=0):
        k = topk_count(n, self.ratio)
        return [("indices", topk_index_dtype(n), k), ("values", dtype, k)]

    def _encode(self, x, seed, offset):
        indices, values = ops.topk_encode(x, self.ratio)
        return {"indices": indices, "values": values}

    def _decode(self, payload, reference):
        return ops.topk_decode(payload.tensors["indices"], payload.tensors["values"], payload.n)

    def choco_delta(self, x):
        n = x.numel()
        return 1.0 if n == 0 else topk_count(n, self.ratio) / n


class Compose(Compressor):
    """Sparsify, then quantize the kept values (SQuARM-SGD's operator).

    The sparsifier uses stream (seed, offset); the quantizer the positions right after
    it, (seed, offset + sparsifier span), so the two never share random numbers.

    contractive=True scales the decoded values by 1 / (1 + beta), beta the quantizer's
    variance factor for the k kept values (QSGD.variance_factor): an unbiased Q with
    E||Q(v) - v||^2 <= beta ||v||^2 becomes Q / (1 + beta), a compression operator in
    CHOCO-SGD's sense (E||C(v) - v||^2 <= (1 - w) ||v||^2), which is what SPARQ-SGD's and
    SQuARM-SGD's analyses compose (Singh et al. 2019, Lemma 1: Q_s(Comp_k(x)) / (1 +
    beta_{k,s})).  Both ends compute the factor from k, so nothing more travels.
    """
    name = "compose"

    def __init__(self, sparsifier: Compressor, quantizer: Compressor, contractive: bool = False):
        if not isinstance(sparsifier, (TopK, RandomK)):
            raise TypeError("Compose's sparsifier must be TopK or RandomK")
        if not isinstance(quantizer, (QSGD, ScaledSign, Identity)):
            raise TypeError("Compose's quantizer must be QSGD, ScaledSign or Identity")
        if not quantizer.fixed_size:
            # its layout needs the kept values' size before encoding (an Elias-coded
            # quantizer was accepted, then failed on every wire path: DDP aborted)
            raise ValueError(f"Compose needs a fixed-size quantizer; {quantizer.name} with "
                             "Elias coding has a data-dependent size: use coding='fixed'")
        self.sparsifier, self.quantizer = sparsifier, quantizer
        self.contractive = bool(contractive)

    def scale(self, k: int) -> float:
        """The factor applied to the decoded kept values (1 unless contractive)."""
        if not self.contractive or not isinstance(self.quantizer, QSGD):
            return 1.0
        return 1.0 / (1.0 + self.quantizer.variance_factor(k))

    @property
    def unbiased(self) -> bool:
        # the contractive 1 / (1 + beta) shrinks the expectation on purpose
        shrunk = self.contractive and isinstance(self.quantizer, QSGD)
        return not shrunk and self.sparsifier.unbiased and self.quantizer.unbiased

    def stream_span(self, n):
        return _round4(n) * 2

    def _kept(self, n, seed, offset) -> int:
        if isinstance(self.sparsifier, TopK):
            return topk_count(n, self.sparsifier.ratio)
        return self.sparsifier.count(n, seed, offset)

    def layout(self, n, dtype, seed=0, offset=0):
        k = self._kept(n, seed, offset)
        head = [("indices", topk_index_dtype(n), k)] if isinstance(self.sparsifier, TopK) else []
        inner = self.quantizer.layout(k, dtype, seed, offset + _round4(n))
        return head + [(f"q.{name}", dt, m) for name, dt, m in inner]

    def _encode(self, x, seed, offset):
        sparse = self.sparsifier._encode(x, seed, offset)
        values = sparse["values"]
        inner = self.quantizer._encode(values, seed, offset + _round4(x.numel()))
        head = {"indices": sparse["indices"]} if "indices" in sparse else {}
        return {**head, **{f"q.{k}": v for k, v in inner.items()}}

    def _decode(self, payload, reference):
        n = payload.n
        k = self._kept(n, payload.seed, payload.offset)
        inner = Payload(self.quantizer.name, torch.Size([k]), payload.dtype, payload.seed,
                        payload.offset + _round4(n),
                        {key[2:]: t for key, t in payload.tensors.items() if key.startswith("q.")})
        values = self.quantizer._decode(inner, None).to(payload.dtype)
        factor = self.scale(k)
        if factor != 1.0:
            values = values * factor
        sparse = Payload(self.sparsifier.name, payload.shape, payload.dtype, payload.seed,
                         payload.offset, {"values": values})
        if "indices" in payload.tensors:
            sparse.tensors = {"indices": payload.tensors["indices"], "values": values}
        return self.sparsifier._decode(sparse, None)


def from_spec(spec: str) -> Compressor:
    """Build a compressor from a short spec: 'moniqua:1:dither:0.5' style strings.

    moniqua:BITS[:ROUNDING[:THETA]]  qsgd:BITS[:BUCKET[:NORM[:CODING]]]  sign  identity
    randomk:RATIO[:rescale]  topk:RATIO  and SPARSIFIER+QUANTIZER for Compose.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a compressor spec is a string, got {type(spec).__name__}")
    if "+" in spec:
        parts = spec.split("+")
        if len(parts) != 2:
            raise ValueError(f"bad compressor spec {spec!r}: a composition is one "
                             "SPARSIFIER+QUANTIZER pair (e.g. topk:0.1+qsgd:4)")
        try:
            return Compose(from_spec(parts[0]), from_spec(parts[1]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad compressor spec {spec!r}: {exc}") from None
    name, *args = spec.split(":")
    # a field more than the form takes was ignored: 'randomk:0.1:rescaled' was biased
    most = {"moniqua": 3, "qsgd": 4, "sign": 0, "identity": 0, "randomk": 2, "topk": 1}
    if name in most and len(args) > most[name]:
        takes = f"at most {most[name]} field(s)" if most[name] else "no fields"
        raise ValueError(f"bad compressor spec {spec!r}: {name} takes {takes} after its name "
                         "(see from_spec's forms)")
    if name == "randomk" and len(args) == 2 and args[1] != "rescale":
        raise ValueError(f"bad compressor spec {spec!r}: randomk's optional second field "
                         f"is 'rescale', got {args[1]!r}")
    try:
        if name == "moniqua":
            bits = int(args[0]) if args else 1
            rounding = args[1] if len(args) > 1 else ("dither" if bits == 1 else "stochastic")
            return Moniqua(float(args[2]) if len(args) > 2 else 1.0, bits, rounding)
        if name == "qsgd":
            return QSGD(int(args[0]) if args else 4, int(args[1]) if len(args) > 1 else 512,
                        args[2] if len(args) > 2 else "max",
                        args[3] if len(args) > 3 else "fixed")
        if name == "sign":
            return ScaledSign()
        if name == "identity":
            return Identity()
        if name == "randomk":
            return RandomK(float(args[0]), len(args) > 1 and args[1] == "rescale")
        if name == "topk":
            return TopK(float(args[0]))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"bad compressor spec {spec!r}: {exc}") from None
    raise ValueError(f"unknown compressor {name!r} in {spec!r}; use moniqua, qsgd, sign, "
                     "identity, randomk, topk or SPARSIFIER+QUANTIZER")
