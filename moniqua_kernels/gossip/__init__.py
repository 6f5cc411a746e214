"""Decentralized training on torch.distributed (and in one process, see simulate).

    import moniqua_kernels as mk
    g = mk.gossip.Moniqua(model, topology="ring", bits=1)   # theta, gamma: defaults
    ... opt.step(); g.step()

Algorithms: DPSGD, AllReduce, Moniqua(variant="dpsgd"|"d2"|"adpsgd"), Choco, SQuARM, the
baselines Moniqua's paper compares with: DCD (DCD-PSGD), ECD (ECD-PSGD), DeepSqueeze, and
ADPSGD (asynchronous on torch.distributed).  DDP hooks: compressed_allreduce_hook with
CompressedHookState (any compressor; QSGD, sign, top-k and random-k states by name),
allreduce_hook and fp16_compress_hook (torch's, safe at exit on gloo: hooks.py);
DataParallel runs DDP behind the algorithms' interface (``train --algorithm ddp``).
Every algorithm counts the bytes each worker sends (``bytes_sent``, ``last_bytes_sent``);
the gossip algorithms start with a handshake (``ConfigMismatch`` when the ranks'
settings differ).
"""
from . import theta, topology, transport
from .base import GossipAlgorithm, ring_allreduce_bytes, stream_seed
from .adpsgd import ADPSGD
from .choco import Choco, SQuARM
from .dcd import DCD
from .ddp import DataParallel
from .deepsqueeze import DeepSqueeze
from .dpsgd import DPSGD, AllReduce
from .ecd import ECD
from .flat import FlatParams
from .handshake import ConfigMismatch
from .hooks import (CompressedHookState, QSGDHookState, RandomKHookState, SignEFHookState,
                    TopKEFHookState, allreduce_hook, compressed_allreduce_hook,
                    fp16_compress_hook, qsgd_hook, register_compressed_hook)
from .moniqua import Moniqua
from .theta import Adaptive, LRProportional, ThetaMonitor, ThetaViolation, ThetaViolationError
from .topology import Topology, TopologyError
from .transport import DistTransport, InMemoryNetwork, InMemoryTransport, PeerError

ALGORITHMS = {"dpsgd": DPSGD, "allreduce": AllReduce, "moniqua": Moniqua, "choco": Choco,
              "squarm": SQuARM, "dcd": DCD, "ecd": ECD, "deepsqueeze": DeepSqueeze,
              "adpsgd": ADPSGD}

__all__ = ["DPSGD", "AllReduce", "Moniqua", "Choco", "SQuARM", "DCD", "ECD", "DeepSqueeze",
           "ADPSGD", "qsgd_hook", "QSGDHookState",
           "CompressedHookState", "compressed_allreduce_hook", "register_compressed_hook",
           "SignEFHookState", "TopKEFHookState", "RandomKHookState", "allreduce_hook",
           "fp16_compress_hook", "DataParallel",
           "GossipAlgorithm", "Topology", "TopologyError", "PeerError", "DistTransport",
           "InMemoryNetwork", "InMemoryTransport", "FlatParams", "ThetaMonitor",
           "ThetaViolation", "ThetaViolationError", "Adaptive", "LRProportional",
           "ConfigMismatch", "stream_seed", "ring_allreduce_bytes",
           "ALGORITHMS", "theta", "topology", "transport"]
