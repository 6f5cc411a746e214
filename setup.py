"""Build: pure Python always; the native extension moniqua_kernels._C when it can be.

- MONIQUA_SKIP_EXT=1: pure Python, no compiler needed.
- torch built with CUDA and CUDA_HOME set: CUDAExtension (CPU + CUDA kernels);
  TORCH_CUDA_ARCH_LIST, if the user set it, is respected and never overridden.
- otherwise: CppExtension with OpenMP (CPU kernels).
- MONIQUA_CXX_OPT=-O1 (or -O0/-O2/-Os): the C++ optimization level, -O3 unless set; for
  test builds (scripts/compat.sh), see cxx_opt_level.
The extension is skipped cleanly while csrc/ holds no sources.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def cxx_opt_level():
    """The C++ optimization level: -O3 unless MONIQUA_CXX_OPT names another.  For test
    builds only: scripts/compat.sh builds with -O1, where the extension is built a second
    time (for torch 2.11) to test what depends on torch's version, not the CPU kernels'
    speed; their -O3 build is the main lane's.  On the 2-core CI box the CPU-only
    extension built in 183 s at -O3 and 41 s at -O1 (270 s of CPU at -O3, one job)."""
    level = os.environ.get("MONIQUA_CXX_OPT", "-O3")
    if level not in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        raise ValueError(f"MONIQUA_CXX_OPT={level!r}: expected one of -O0, -O1, -O2, -O3, -Os")
    return level


def native_extensions():
    if os.environ.get("MONIQUA_SKIP_EXT", "0") == "1":
        return [], {}
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not cpu_sources:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = [os.path.join("csrc", "ops.cpp")] + cpu_sources
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -ffp-contract=off: no FMA contraction (DESIGN section 4).  -fno-trapping-math only
    # gives up FP exception flags, never changes a result; without it GCC will not
    # vectorize floorf (measured: Moniqua encode stayed scalar, 5x slower).  -g0 overrides
    # the -g of Python's CFLAGS: the ISA clones of every template made the debug info
    # 26 MB of a 27 MB library and a quarter of the build time (Moniqua's CPU kernels,
    # one thread of the CI box: 125 s with it, 90 s without).
    # No -std: torch's build adds the standard its headers are written for (C++17 in
    # older releases, C++20 in torch 2.13); a -std=c++17 here overrode it, and torch
    # 2.13's headers warned about C++20 features in every file.  The kernels compile
    # under either (scripts/ctest.sh builds them as C++17).
    cxx_flags = [cxx_opt_level(), "-fopenmp", "-ffp-contract=off", "-fno-trapping-math",
                 "-g0"]
    use_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None \
        and os.environ.get("MONIQUA_NO_CUDA", "0") != "1"
    if use_cuda:
        # The kernels (*.cu, torch-free); csrc/ops.cpp launches them (MONIQUA_WITH_CUDA).
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc_flags = ["-O3", "-std=c++17", "--fmad=false"]
        if os.environ.get("MONIQUA_PTXAS_VERBOSE", "0") == "1":  # register/spill report
            nvcc_flags.append("-Xptxas=-v")
        ext = cpp_extension.CUDAExtension(
            "moniqua_kernels._C", sources, include_dirs=include_dirs,
            define_macros=[("MONIQUA_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags,
                                "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "moniqua_kernels._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
