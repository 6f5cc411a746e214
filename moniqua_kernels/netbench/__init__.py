"""Real-network benchmark: train over links of known rate in Linux network namespaces.

    python -m moniqua_kernels netbench --rate 100mbit 1gbit --json nb.json --plot nb.png

Modules: ``netns`` (the namespaces, veths, bridge and qdiscs of one run, and the sweep
of killed runs' leftovers), ``tcpprobe``/``measure`` (link throughput), ``procs``
(children that die with the benchmark), ``runner`` (``train`` per rank per algorithm),
``report`` (rows, tables, plot), ``command`` (the command line).
"""
from .command import build_parser, main

__all__ = ["main", "build_parser"]
