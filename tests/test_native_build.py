"""The built extension's shape, where a test can see it: every CPU kernel body sits in
the ISA clones of its entry point (cpu/block.h, MK_CPU_ENTRY).

A kernel body that escapes into a helper is compiled once, for the baseline ISA, and
every clone calls it: all results stay bit-exact and only the speed drops.  That
happened (dispatch.h's helpers were not always inlined: 1-bit nearest encode took 36 ms
instead of 2.7 ms on one thread at 2^24) and no other test could notice.
"""
import platform
import shutil
import subprocess

import pytest


def _symbols():
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the ISA clones exist on Linux x86-64 builds (GCC target_clones)")
    if shutil.which("nm") is None:
        pytest.skip("needs nm (binutils) to read the extension's symbols")
    try:
        from moniqua_kernels import _C
    except ImportError as exc:
        pytest.skip(f"the native extension is not built ({exc})")
    out = subprocess.run(["nm", "-C", _C.__file__], capture_output=True, text=True,
                         check=True).stdout
    if "[clone .arch_x86_64_v4]" not in out:
        pytest.skip("built without ISA clones (not GCC, or MK_NO_CLONES)")
    return out.splitlines()


def test_kernel_bodies_are_inlined_into_the_isa_clones():
    lines = _symbols()
    escaped = sorted({line.split(" ", 2)[2].split("<")[0] for line in lines
                      if " moniqua_kernels::dispatch_" in line and "[clone .cold]" not in line})
    assert not escaped, (f"out-of-line dispatch helpers {escaped}: the kernel bodies inside "
                         f"them run the baseline ISA in every clone (make them inline)")


def test_every_cpu_entry_point_has_its_clones():
    lines = _symbols()
    entries = {line.split(" ", 2)[2].split("(")[0] for line in lines
               if " moniqua_kernels::cpu::" in line and "[clone .resolver]" in line}
    assert len(entries) >= 10, entries
    for entry in entries:
        for clone in ("arch_x86_64_v4", "arch_x86_64_v3", "default"):
            assert any(line.split(" ", 2)[2].startswith(entry + "(") and
                       f"[clone .{clone}]" in line and "[clone .cold]" not in line
                       for line in lines), f"{entry} has no {clone} clone"
