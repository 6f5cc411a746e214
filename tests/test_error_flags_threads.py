"""CPU ops called on threads that torch starts, where DDP hooks decode.

A DDP communication hook's future callbacks run on gloo's run-loop thread, which gets a
fresh Python thread state for each callback and loses it after.  The ops' CPU error flags
used to live in a threading.local, so each callback left a flag table (row views) to be
freed inside that thread-state teardown: with torch 2.11 on Python 3.11.7 every
compressed DDP hook died with SIGSEGV there (CPython gh-119585, fixed in 3.12.4).  This
runs the same situation in a child process, one rank of a real gloo group, so a crash
shows up as the child's exit status.  It can only crash where torch and CPython have that
bug (torch 2.13 does not); everywhere, it checks that ops on those threads give the
results they give on the main thread and raise their flagged errors through the future.
"""
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent("""
    import datetime, threading
    import torch, torch.distributed as dist
    import moniqua_kernels as mk

    # One rank, rendezvous in memory: no port to race other tests for.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))
    main = threading.get_ident()
    x = torch.randn(4095)
    scale, payload = mk.sign_encode(x)
    want = mk.sign_decode(scale, payload, x.numel())
    off_main = 0

    def decode(fut, payload=payload):
        global off_main
        fut.wait()
        off_main += threading.get_ident() != main
        return mk.sign_decode(scale, payload, x.numel())

    def decode_in_callbacks(enough, tries=1000):
        # The callback runs on gloo's thread when it is attached before the all-reduce
        # ends (a larger buffer makes that the rule), else inline on this thread.
        start = off_main
        for _ in range(tries):
            buf = torch.zeros(1 << 18)
            got = dist.all_reduce(buf, async_op=True).get_future().then(decode).wait()
            assert torch.equal(got, want)
            if off_main - start >= enough:
                return
        raise AssertionError(f"{off_main - start} of {tries} callbacks ran on a gloo thread")

    decode_in_callbacks(20)

    bad = payload.clone()
    bad[-1] |= 0x80  # 4095 elements: the last byte's top bit is padding
    fut = dist.all_reduce(torch.zeros(1 << 18), async_op=True).get_future()
    try:
        fut.then(lambda f: decode(f, bad)).wait()
    except Exception as exc:  # torch wraps the callback's error in a RuntimeError
        assert "sign_decode" in str(exc) and "padding" in str(exc), exc
    else:
        raise AssertionError("a padding error in a callback did not surface")
    decode_in_callbacks(5)  # the error cleared the flags of the thread it was raised on
    dist.destroy_process_group()
    print("callbacks off the main thread:", off_main, flush=True)
""")


def test_ops_on_torch_callback_threads():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert "callbacks off the main thread" in proc.stdout
