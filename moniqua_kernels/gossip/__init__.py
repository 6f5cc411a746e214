"""Decentralized training on torch.distributed (and in one process, see simulate).

    import moniqua_kernels as mk
    g = mk.gossip.Moniqua(model, topology="ring", theta=0.05, bits=1)
    ... opt.step(); g.step()

Algorithms: DPSGD, AllReduce, Moniqua(variant="dpsgd"|"d2"|"adpsgd"), Choco, SQuARM;
DDP hooks: compressed_allreduce_hook with CompressedHookState (any compressor; QSGD,
sign, top-k and random-k states by name); DataParallel runs DDP behind the algorithms'
interface (``train --algorithm ddp``).  Every algorithm counts the bytes each worker
sends (``bytes_sent``, ``last_bytes_sent``).
"""
from . import theta, topology, transport
from .base import GossipAlgorithm, ring_allreduce_bytes, stream_seed
from .choco import Choco, SQuARM
from .dpsgd import DPSGD, AllReduce
from .flat import FlatParams
from .ddp import DataParallel
from .hooks import (CompressedHookState, QSGDHookState, RandomKHookState, SignEFHookState,
                    TopKEFHookState, compressed_allreduce_hook, qsgd_hook,
                    register_compressed_hook)
from .moniqua import Moniqua
from .theta import LRProportional, ThetaMonitor, ThetaViolation
from .topology import Topology, TopologyError
from .transport import DistTransport, InMemoryNetwork, InMemoryTransport, PeerError

ALGORITHMS = {"dpsgd": DPSGD, "allreduce": AllReduce, "moniqua": Moniqua, "choco": Choco,
              "squarm": SQuARM}

__all__ = ["DPSGD", "AllReduce", "Moniqua", "Choco", "SQuARM", "qsgd_hook", "QSGDHookState",
           "CompressedHookState", "compressed_allreduce_hook", "register_compressed_hook",
           "SignEFHookState", "TopKEFHookState", "RandomKHookState", "DataParallel",
           "GossipAlgorithm", "Topology", "TopologyError", "PeerError", "DistTransport",
           "InMemoryNetwork", "InMemoryTransport", "FlatParams", "ThetaMonitor",
           "ThetaViolation", "LRProportional", "stream_seed", "ring_allreduce_bytes",
           "ALGORITHMS", "theta", "topology", "transport"]
