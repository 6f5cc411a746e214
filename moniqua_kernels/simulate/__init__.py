"""n workers in one process, running exactly the algorithm classes of ``gossip``.

    from moniqua_kernels import simulate
    r = simulate.run("moniqua-1bit", n_workers=8, topology="ring", dataset="digits",
                     steps=600, lr=0.1, batch_size=16, seed=0)
    r.test_accuracy, r.bits_per_element, r.bytes_per_worker_per_step, r.est_comm_time_s

Each worker is a thread with its own model, optimizer, data shard and an
``InMemoryTransport``; they meet only through the transport, as processes do.  Every
computation is deterministic and does not depend on the interleaving, so a run equals
the same run on torch.distributed (``run_processes``, gloo on localhost) bit for bit.
(Torch ops run with one intra-op thread during a run, as in the processes, because
matmul results may depend on the thread count.)

The package, by job:
  configs    named algorithm configurations (``CONFIGS``, ``list_configs()``), the run
             specification and the network model
  worker     one worker's training loop and the Result assembled from all workers
  threaded   ``run``: the workers as threads of this process over in-memory mailboxes
  processes  ``run_processes``: the workers as processes over gloo on localhost

Network model: ``NetworkModel(latency_s, bandwidth_Bps)`` estimates a worker's
communication time in a step as rounds x latency + bytes / bandwidth (its sends share
one link; the rounds of a step are sequential); a synchronous step waits for the slowest
worker, so the estimate of a step is the max over workers, summed over the steps.
"""
from .configs import (ALIASES, CONFIGS, AlgorithmConfig, NetworkModel, RunSpec,
                      list_configs)
from .processes import run_processes
from .threaded import run
from .worker import Result

__all__ = ["run", "run_processes", "Result", "AlgorithmConfig", "CONFIGS", "ALIASES",
           "list_configs", "NetworkModel", "RunSpec"]
