"""Error flags: what the kernels found wrong with the data, counted in the pass they
already make (DESIGN.md section 7).

Each op that checks its data gets a flag row, int64[3], from its device's table:

  [0] non-finite elements: NaN/inf inputs, or x / B overflowing float32 (a modulus too
      small for the data), or a mix result that would not be finite (not written);
  [1] a stream tensor whose offset is negative or not a multiple of 4 (the kernel
      then writes nothing);
  [2] a payload whose padding bits (the unused high bits of its last byte) are not
      zero: a payload of another length, or corrupted.

When an error surfaces:
  * CPU tensors, eager: right after the kernel returns, the op raises (the flags of
    the CPU are per thread, so the simulator's worker threads never see each other's).
  * CUDA tensors: no op synchronises with the host.  The counts accumulate in a flag
    table on the device; ``check_errors()`` reads it (one synchronisation), raises for
    every op that counted something and clears it.  The gossip algorithms call it in
    ``end()``, after they have waited for the exchange anyway, so a NaN in step t
    surfaces at the end of step t.
  * Under torch.compile the ops cannot raise from inside the graph on any device: the
    counts land in the same tables and ``check_errors()`` reports them.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch

SLOTS = 3
NON_FINITE, BAD_STREAM, PADDING = range(SLOTS)


class KernelInputError(ValueError):
    """A kernel found bad data (non-finite values, a bad stream offset, bad padding)."""


_names: list[str] = []          # op names, in the order of their rows
_cuda_tables: dict[int, torch.Tensor] = {}
_lock = threading.Lock()


class _CpuFlags:
    """One thread's CPU flag table, with its row views and a numpy view of it."""
    __slots__ = ("table", "rows", "host")

    def __init__(self, nops: int):
        self.table = torch.zeros(nops, SLOTS, dtype=torch.int64)
        # Row views made once: a view costs ~2 us, and the ops ask for one every call.
        self.rows = list(self.table)
        self.host = self.table.numpy()


# The CPU tables by thread id, not in a threading.local.  A thread that torch starts
# (gloo's run loop, which runs a DDP hook's future callbacks) gets a fresh Python thread
# state for each callback and loses it after, so a thread-local table was made per
# callback and its tensors freed inside PyThreadState_Clear.  Freeing a view there
# re-enters PyGILState_Ensure, which crashes CPython before 3.12.4 (gh-119585) under
# torch 2.11: every compressed DDP hook died with SIGSEGV on Python 3.11.7, and a view
# so freed crashes 3.12.1 too (not under torch 2.13); the GPU machines run torch 2.11 on
# Python 3.12.3.  Test: tests/test_error_flags_threads.py.  Kept here, a table is made
# once per OS thread and never freed in a thread-state teardown.  A new thread that
# reuses a finished thread's id takes its table over: the eager path leaves a table
# cleared, so only flags that a finished thread's compiled or dispatcher calls left
# unchecked could surface there.
_cpu_by_thread: dict[int, _CpuFlags] = {}


def register(op: str) -> int:
    """The row index of op (called once per op by the op table)."""
    _names.append(op)
    return len(_names) - 1


def _cpu_flags() -> _CpuFlags:
    """This thread's CPU flags (made on its first call, or when ops were added since)."""
    ident = threading.get_ident()
    flags = _cpu_by_thread.get(ident)
    if flags is None or len(flags.rows) != len(_names):
        flags = _cpu_by_thread[ident] = _CpuFlags(len(_names))
    return flags


def _cuda_table(index: int) -> torch.Tensor:
    table = _cuda_tables.get(index)
    if table is None:
        with _lock:
            table = _cuda_tables.get(index)
            if table is None:
                table = torch.zeros(len(_names), SLOTS, dtype=torch.int64,
                                    device=torch.device("cuda", index))
                _cuda_rows[index] = list(table)
                _cuda_tables[index] = table
    return table


_cuda_rows: dict[int, list[torch.Tensor]] = {}
_compiled_cpu_rows: list[torch.Tensor] = []
_compiled_cpu_table: list[torch.Tensor] = []  # [the table], once freeze() made it


def freeze() -> None:
    """Called once every op is declared: make the tables a compiled graph will use, so
    that torch.compile never sees one created (a guard on their absence would recompile
    the graph on its second call).  CUDA's are made when CUDA initialises."""
    table = torch.zeros(len(_names), SLOTS, dtype=torch.int64)
    _compiled_cpu_table[:] = [table]
    _compiled_cpu_rows[:] = list(table)
    torch.cuda._lazy_call(_make_cuda_tables)


def _make_cuda_tables() -> None:
    for index in range(torch.cuda.device_count()):
        _cuda_table(index)


def flag_row(row: int, device: torch.device, is_cuda: Optional[bool] = None) -> torch.Tensor:
    """The int64[3] flag row of an op on a device (a view into its table)."""
    if is_cuda if is_cuda is not None else device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in _cuda_rows:
            _cuda_table(index)
        return _cuda_rows[index][row]
    if torch.compiler.is_compiling():  # one process-wide table, made ahead by freeze()
        return _compiled_cpu_rows[row]
    # _cpu_flags() inlined: the call was 0.1 us of a 5.8 us 1024-element encode.
    flags = _cpu_by_thread.get(threading.get_ident())
    if flags is None or len(flags.rows) != len(_names):
        flags = _cpu_flags()
    return flags.rows[row]


# Ops whose payload check is more than the padding bits: what slot [2] counts for them.
_PAYLOAD_ERRORS = {
    "qsgd_elias_decode": "stream(s) that do not parse as Elias-coded QSGD (codes past a "
                         "bucket's end, a level above s, a stream that ends early or has "
                         "bytes or bits left over: another configuration's payload, or "
                         "corrupted); the output holds whatever was decoded before",
}


# Ops whose slot [0] has a cause besides the input's own values: Moniqua's divide by B.
_MODULUS_TOO_SMALL = ("NaN or inf in the input, or x / B overflowing float32 because the "
                      "modulus is too small for the data")
_NON_FINITE_CAUSES = {op: _MODULUS_TOO_SMALL
                      for op in ("moniqua_encode", "moniqua_decode", "moniqua_mix_")}


def messages(row: int, counts) -> list[str]:
    op = _names[row]
    non_finite, bad_stream, padding = (int(c) for c in counts)
    out = []
    if non_finite:
        why = _NON_FINITE_CAUSES.get(op, "NaN or inf in the input")
        out.append(
            f"{op}: {non_finite} non-finite element(s) ({why}); fix the values (a "
            "diverged model?) or pass check_finite=False to accept an unspecified code "
            "for them")
    if bad_stream:
        out.append(f"{op}: the stream tensor's offset was negative or not a multiple of 4 "
                   f"({bad_stream} call(s)); nothing was written")
    if padding:
        what = _PAYLOAD_ERRORS.get(op, "payload(s) with non-zero padding bits in the last "
                                       "byte (a payload of another length, or corrupted)")
        out.append(f"{op}: {padding} {what}")
    return out


def raise_cpu(row: int, flags: torch.Tensor) -> None:
    """After a CPU kernel: raise if it flagged anything (and clear the row).  Reads the
    row through numpy (shared memory): a torch reduction would cost ~5 us a call."""
    counts = _cpu_by_thread[threading.get_ident()].host[row]
    if counts[0] or counts[1] or counts[2]:
        found = messages(row, counts.tolist())
        flags.zero_()
        raise KernelInputError("; ".join(found))


def check_errors(device=None) -> None:
    """Raise KernelInputError for every op whose kernels flagged bad data since the last
    check, on the given device (default: this thread's CPU flags and every CUDA device
    used so far), and clear the flags.  On CUDA this synchronises with the device."""
    tables: list[torch.Tensor] = []
    if device is None or torch.device(device).type == "cpu":
        tables.append(_cpu_flags().table)
        if _compiled_cpu_table:
            tables.append(_compiled_cpu_table[0])
    if device is None:
        tables += list(_cuda_tables.values())
    elif torch.device(device).type == "cuda":
        index: Optional[int] = torch.device(device).index
        tables.append(_cuda_table(torch.cuda.current_device() if index is None else index))
    found = []
    for table in tables:
        snapshot = table.to("cpu", copy=True)  # (a CPU table must not alias its snapshot)
        if bool(snapshot.any()):
            table.zero_()
            for row in range(snapshot.shape[0]):
                found += messages(row, snapshot[row].tolist())
    if found:
        raise KernelInputError("; ".join(found))
