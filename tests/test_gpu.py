"""What only a real GPU can show, beyond the parity suites: the ops inside training
loops (CUDA graph capture, torch.compile with a new seed every step), Triton's
specialisation on scalar arguments, misaligned views, and outputs written over
poisoned memory.  Skipped without CUDA; scripts/gpu_check.sh runs it on a lent GPU.

DESIGN.md section 8 is the contract: seeds and offsets are data, not guards; a graph
captured with a seed held in a device tensor draws a new stream when the tensor
changes; vector accesses check alignment.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import moniqua_kernels as mk

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

GPU_BACKENDS = [b for b in ("triton", "cuda")
                if mk.available("moniqua_encode", "cuda")[b] is None]
if not GPU_BACKENDS:
    pytest.skip("neither the triton nor the cuda backend can run here", allow_module_level=True)

B, BITS, ROUNDING = 2.0, 1, "dither"


def sample(n, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, generator=g, device="cuda") * 3).to(dtype)


def poison_allocator(nbytes=1 << 26):
    """Fill a block with 0xAA and free it: the caching allocator hands the same memory
    to the next allocation, so an output element the kernel forgets to write shows."""
    block = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(0xAA)
    del block


def reference(fn):
    with mk.use_backend("reference"):
        return fn()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("n", (1, 4095, 4097, (1 << 20) + 3))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_poisoned_outputs_are_fully_written(backend, n, dtype):
    x = sample(n, dtype, seed=n)
    y = (x.float() + 0.2).to(dtype)
    want = reference(lambda: mk.moniqua_encode(x, B, 2, "dither", 16, 2 ** 32 + 4))
    poison_allocator()
    with mk.use_backend(backend):
        got = mk.moniqua_encode(x, B, 2, "dither", 16, 2 ** 32 + 4)
    assert torch.equal(got, want)
    want_dec = reference(lambda: mk.moniqua_decode(want, y, B, 2, "dither", 16, 2 ** 32 + 4))
    poison_allocator()
    with mk.use_backend(backend):
        got_dec = mk.moniqua_decode(want, y, B, 2, "dither", 16, 2 ** 32 + 4)
    tol = 2 * torch.finfo(torch.float32).eps * torch.clamp(y.float().abs(), min=B)
    if dtype != torch.float32:
        tol = tol + torch.finfo(dtype).eps * want_dec.float().abs()
    assert bool(((got_dec.float() - want_dec.float()).abs() <= tol).all())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_misaligned_views(backend):
    """Inputs that start 1 element (x, y) or 3 bytes (payload) past a 16-byte boundary."""
    n = (1 << 16) + 5
    xbuf, ybuf = sample(n + 1), sample(n + 1, seed=1)
    x, y = xbuf[1:], ybuf[1:]
    want = reference(lambda: mk.moniqua_encode(x, B, 4, "dither", 3, 8))
    with mk.use_backend(backend):
        got = mk.moniqua_encode(x, B, 4, "dither", 3, 8)
    assert torch.equal(got, want)
    recv = torch.empty(want.numel() + 3, dtype=torch.uint8, device="cuda")
    recv[3:] = want
    p = recv[3:]
    want_dec = reference(lambda: mk.moniqua_decode(p, y, B, 4, "dither", 3, 8))
    with mk.use_backend(backend):
        got_dec = mk.moniqua_decode(p, y, B, 4, "dither", 3, 8)
    tol = 2 * torch.finfo(torch.float32).eps * torch.clamp(y.abs(), min=B)
    assert bool(((got_dec - want_dec).abs() <= tol).all())
    xm_ref, xm = x.clone(), xbuf.clone()[1:]
    reference(lambda: mk.moniqua_mix_(xm_ref, [p], [0.5], want, B, 4, "dither", 1.0, [3, 3],
                                      [8, 8]))
    with mk.use_backend(backend):
        mk.moniqua_mix_(xm, [p], [0.5], want, B, 4, "dither", 1.0, [3, 3], [8, 8])
    assert bool(((xm - xm_ref).abs() <= 4 * tol).all())


# Misaligned OUTPUT views can fault (a misaligned vector store kills the CUDA context),
# so they run in a child process: a fault fails this test, not the session.
_OUT_VIEW_CHILD = textwrap.dedent("""
    import sys, torch, moniqua_kernels as mk
    backend = sys.argv[1]
    n = (1 << 16) + 5
    buf = torch.full((n + 1,), -1.0, device="cuda")
    with mk.use_backend("reference"):
        want = mk.philox_uniform(n, 7, 4, "cuda")
    with mk.use_backend(backend):
        got = mk.philox_uniform(n, 7, 4, "cuda", out=buf[1:])
    torch.cuda.synchronize()
    assert got.data_ptr() == buf[1:].data_ptr(), "out= was not written in place"
    assert torch.equal(buf[1:], want), "wrong values in a misaligned out view"
    assert buf[0].item() == -1.0, "wrote before the view"
    x = torch.randn(n, device="cuda")
    pbuf = torch.zeros(n // 8 + 2, dtype=torch.uint8, device="cuda")
    with mk.use_backend(backend):
        mk.moniqua_encode(x, 2.0, 1, "dither", 5, out=pbuf[1:1 + (n + 7) // 8])
    with mk.use_backend("reference"):
        want = mk.moniqua_encode(x, 2.0, 1, "dither", 5)
    torch.cuda.synchronize()
    assert torch.equal(pbuf[1:1 + (n + 7) // 8], want), "wrong payload in a misaligned out view"
    print("ok")
""")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_misaligned_out_views_in_child(backend):
    proc = subprocess.run([sys.executable, "-c", _OUT_VIEW_CHILD, backend],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# ------------------------------------------------------------------ CUDA graph capture

def _capture(fn):
    """Warm up on a side stream (compiles, allocates), then capture fn in a graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_graph_capture_replays_eager_with_default_arguments(backend):
    """A captured encode + mix with the ops' default arguments replays the eager bytes."""
    n = (1 << 20) + 3
    x0 = sample(n)
    neighbour = reference(lambda: mk.moniqua_encode(x0 + 0.1, B, seed=11))
    x = x0.clone()

    def step():
        own = mk.moniqua_encode(x, B, seed=12)
        mk.moniqua_mix_(x, [neighbour], [0.5], own, B, gamma=0.5, seeds=[11, 12],
                        offsets=[0, 0])
        return own

    with mk.use_backend(backend):
        graph, own_static = _capture(step)
        x.copy_(x0)
        graph.replay()
        torch.cuda.synchronize()
        got_x, got_own = x.clone(), own_static.clone()
        x.copy_(x0)
        want_own = step()
        assert torch.equal(got_own, want_own)
        assert torch.equal(got_x, x)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_graph_replay_draws_the_stream_of_a_seed_tensor(backend):
    """A seed held in a device tensor is read at replay: changing it changes the dither."""
    n = (1 << 20) + 3
    x = sample(n)
    seed = torch.tensor(5, dtype=torch.int64, device="cuda")
    with mk.use_backend(backend):
        graph, payload = _capture(lambda: mk.moniqua_encode(x, B, seed=seed))
        graph.replay()
        first = payload.clone()
        seed.fill_(6)
        graph.replay()
        second = payload.clone()
    assert torch.equal(first, reference(lambda: mk.moniqua_encode(x, B, seed=5)))
    assert torch.equal(second, reference(lambda: mk.moniqua_encode(x, B, seed=6)))
    assert not torch.equal(first, second)


# ------------------------------------------------------------- torch.compile in a loop

@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_with_a_new_seed_every_step(backend):
    """fullgraph compile of a step whose seed and offset change every call: at most the
    one recompile of dynamo's automatic dynamic ints, and the eager bytes every step."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    x = sample(4097)

    @torch.compile(backend=counter, fullgraph=True)
    def step(x, seed, offset):
        return mk.moniqua_encode(x, B, bits=2, rounding="dither", seed=seed, offset=offset)

    with mk.use_backend(backend):
        for k in range(12):
            seed, offset = 1000 + 7 * k, 4 * k
            got = step(x, seed, offset)
            assert torch.equal(got, reference(
                lambda: mk.moniqua_encode(x, B, 2, "dither", seed, offset))), k
    assert counter.frame_count <= 2, f"{counter.frame_count} compiles for 12 seeds"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_with_seed_tensors_compiles_once(backend):
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    x = sample(4097)

    @torch.compile(backend=counter, fullgraph=True)
    def step(x, seed, offset):
        return mk.moniqua_encode(x, B, bits=1, seed=seed, offset=offset)

    with mk.use_backend(backend):
        for k in range(12):
            got = step(x, torch.tensor(5 + k, device="cuda"), torch.tensor(8 * k, device="cuda"))
            assert torch.equal(got, reference(lambda: mk.moniqua_encode(x, B, 1, "dither",
                                                                        5 + k, 8 * k))), k
    assert counter.frame_count == 1


# ----------------------------------------------------------------------- error flags

@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_non_finite_is_flagged_without_a_sync_and_reported_by_check_errors(backend):
    mk.check_errors()
    x = sample(10_001)
    x[[5, 4096, 10_000]] = torch.tensor([float("nan"), float("inf"), -float("inf")],
                                         device="cuda")
    with mk.use_backend(backend):
        payload = mk.moniqua_encode(x, B)  # returns: no raise, no synchronisation
        with pytest.raises(mk.KernelInputError, match="moniqua_encode: 3 non-finite"):
            mk.check_errors()
        y = x.clone()
        mk.moniqua_mix_(y, [payload], [0.5], payload, B)
        assert torch.isnan(y[5]) and torch.isinf(y[4096])  # left as they were
        with pytest.raises(mk.KernelInputError, match="moniqua_mix_: 3 non-finite"):
            mk.check_errors("cuda")
        mk.qsgd_encode(x)
        mk.sign_encode(x)
        with pytest.raises(mk.KernelInputError) as err:
            mk.check_errors()
        assert "qsgd_encode: 3 non-finite" in str(err.value)
        assert "sign_encode: 3 non-finite" in str(err.value)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_capture_with_checks_on_allocates_nothing_model_sized(backend):
    """The default (checked) encode into a persistent buffer inside a graph."""
    n = (1 << 20) + 3
    x = sample(n)
    buf = torch.empty((n + 7) // 8, dtype=torch.uint8, device="cuda")
    with mk.use_backend(backend):
        graph, _ = _capture(lambda: mk.moniqua_encode(x, B, seed=3, out=buf))
        graph.replay()
    assert torch.equal(buf, reference(lambda: mk.moniqua_encode(x, B, seed=3)))


# ------------------------------------------------------------- Triton specialisation

def _compiled_variants(jit_fn) -> int:
    caches = getattr(jit_fn, "device_caches", None)
    if caches is None:
        pytest.skip("this Triton has no JITFunction.device_caches to count compiles")
    return sum(len(entry[0]) for entry in caches.values())


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="Triton backend unavailable")
def test_triton_does_not_specialise_on_seed_offset_or_size():
    """Seeds and offsets divisible by 16 or not, 32- or 64-bit, and sizes of any
    divisibility must reuse one compiled kernel per (dtype, bits, rounding)."""
    from moniqua_kernels.triton import moniqua as tm
    kernel = tm._moniqua_encode_kernel
    x = sample(4096 * 3)
    with mk.use_backend("triton"):
        mk.moniqua_encode(x[:4097], B, 4, "dither", 1, 4)  # full blocks and the partial one
        before = _compiled_variants(kernel)
        for seed, offset, n in ((16, 16, 4096 * 3), (2 ** 40 + 3, 2 ** 36, 4096 * 2 + 16),
                                (-5, 0, 4097), (17, 4, 33)):
            mk.moniqua_encode(x[:n], B, 4, "dither", seed, offset)
        after = _compiled_variants(kernel)
    assert after == before, f"{after - before} extra compiles"
    mix = tm._moniqua_mix_kernel
    with mk.use_backend("triton"):
        p = [mk.moniqua_encode(x, B, 1, "dither", 1, 0) for _ in range(3)]
        mk.moniqua_mix_(x.clone(), p[:2], [0.3, 0.3], p[2], B, 1, "dither", 1.0, [1, 2, 3],
                        [0, 0, 0])
        before = _compiled_variants(mix)
        for seeds in ([16, 2 ** 40 + 1, -7], [2 ** 63 - 1, 0, 1]):
            mk.moniqua_mix_(x.clone(), p[:2], [0.3, 0.3], p[2], B, 1, "dither", 1.0, seeds,
                            [4, 2 ** 36, 64])
        assert _compiled_variants(mix) == before


# ---------------------------------------------------------------------- large sizes

@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_beyond_2_31_elements_tail(backend):
    """n > 2^31 (64-bit indexing): the tail's codes and decoded values equal the
    reference run on the tail alone at the matching stream offset."""
    n = (1 << 31) + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < n * 2 * 3:
        pytest.skip("needs about 13 GiB of free GPU memory")
    x = torch.empty(n, dtype=torch.bfloat16, device="cuda").uniform_(-4, 4)
    tail = 8 * 1024
    start = n - tail - 3  # not a multiple of 8: the reference starts mid-byte otherwise
    start -= start % 8
    with mk.use_backend(backend):
        payload = mk.moniqua_encode(x, 1.0, 4, "dither", -3, 2 ** 33, check_finite=False)
        decoded = mk.moniqua_decode(payload, x, 1.0, 4, "dither", -3, 2 ** 33,
                                    check_finite=False)
    part = x[start:]
    want = reference(lambda: mk.moniqua_encode(part, 1.0, 4, "dither", -3, 2 ** 33 + start))
    assert torch.equal(payload[start // 2:], want)
    want_dec = reference(lambda: mk.moniqua_decode(want, part, 1.0, 4, "dither", -3,
                                                   2 ** 33 + start))
    tol = 2 * torch.finfo(torch.float32).eps * torch.clamp(part.float().abs(), min=1.0) \
        + torch.finfo(torch.bfloat16).eps * want_dec.float().abs()
    assert bool(((decoded[start:].float() - want_dec.float()).abs() <= tol).all())
