"""Communication graphs and their mixing (gossip) matrices.

A ``Topology`` holds an n x n mixing matrix W (float64): worker i's new value is
``sum_j W[i, j] x_j``, so i *receives* from every j != i with W[i, j] > 0 and *sends*
to every k != i with W[k, i] > 0.  Static topologies have one W; time-varying ones
(the one-peer exponential graph, random matchings) give W as a function of the step.

Checks run when a topology is built and raise ``TopologyError`` naming what is wrong:
square, finite, non-negative, rows and columns summing to 1 (doubly stochastic, so
gossip preserves the average), symmetric (for the static graphs the algorithms'
theory assumes; the one-peer exponential graph is directed and exempt), connected.

Weights: ``metropolis_hastings(A)`` gives W[i, j] = 1 / (1 + max(d_i, d_j)) on edges
and the rest on the diagonal: symmetric and doubly stochastic for any undirected graph.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import numpy as np

__all__ = ["Topology", "TopologyError", "ring", "torus", "exponential", "one_peer_exponential",
           "complete", "star", "random_matching", "from_adjacency", "from_weights",
           "metropolis_hastings", "from_file", "make"]

_TOL = 1e-9


class TopologyError(ValueError):
    """A graph or mixing matrix that gossip cannot use."""


def metropolis_hastings(adjacency) -> np.ndarray:
    """Metropolis-Hastings weights of an undirected graph (self loops ignored)."""
    a = np.asarray(adjacency, dtype=bool).copy()
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise TopologyError(f"adjacency must be a square matrix, got shape {a.shape}")
    np.fill_diagonal(a, False)
    if not (a == a.T).all():
        i, j = np.argwhere(a != a.T)[0]
        raise TopologyError(f"adjacency is not symmetric: edge {i}->{j} has no reverse "
                            "(Metropolis-Hastings weights need an undirected graph)")
    deg = a.sum(1)
    n = a.shape[0]
    w = np.zeros((n, n))
    for i, j in zip(*np.nonzero(a)):
        w[i, j] = 1.0 / (1.0 + max(deg[i], deg[j]))
    np.fill_diagonal(w, 1.0 - w.sum(1))
    return w


def _components(w: np.ndarray) -> list[list[int]]:
    """Connected components of the undirected support of W (off-diagonal)."""
    n = w.shape[0]
    adj = (w > 0) | (w.T > 0)
    seen, comps = [False] * n, []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            u = stack.pop()
            comp.append(u)
            for v in np.nonzero(adj[u])[0]:
                if not seen[v]:
                    seen[v] = True
                    stack.append(int(v))
        comps.append(sorted(comp))
    return comps


def check_weights(w, *, symmetric: bool = True, connected: bool = True,
                  name: str = "W") -> np.ndarray:
    """Validate a mixing matrix; return it as float64.  Raises TopologyError."""
    w = np.array(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(f"{name} must be a non-empty square matrix, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise TopologyError(f"{name} has non-finite entries")
    if (w < 0).any():
        i, j = np.argwhere(w < 0)[0]
        raise TopologyError(f"{name}[{i}, {j}] = {w[i, j]:g} is negative; mixing weights must "
                            "be >= 0")
    rows, cols = w.sum(1), w.sum(0)
    if np.abs(rows - 1).max() > 1e-6:
        i = int(np.abs(rows - 1).argmax())
        raise TopologyError(f"{name} is not row stochastic: row {i} sums to {rows[i]:.9g}, "
                            "not 1 (try metropolis_hastings(adjacency))")
    if np.abs(cols - 1).max() > 1e-6:
        j = int(np.abs(cols - 1).argmax())
        raise TopologyError(f"{name} is not doubly stochastic: column {j} sums to "
                            f"{cols[j]:.9g}, not 1, so gossip would not preserve the average "
                            "(try metropolis_hastings(adjacency))")
    if symmetric and np.abs(w - w.T).max() > 1e-9:
        i, j = np.unravel_index(int(np.abs(w - w.T).argmax()), w.shape)
        raise TopologyError(f"{name} is not symmetric: W[{i}, {j}] = {w[i, j]:g} but "
                            f"W[{j}, {i}] = {w[j, i]:g}")
    if connected:
        comps = _components(w)
        if len(comps) > 1:
            raise TopologyError(f"{name}'s graph is not connected: {len(comps)} components, "
                                f"e.g. {comps[0]} and {comps[1]}; gossip cannot reach consensus")
    return w


def _balanced_orientation(w: np.ndarray) -> list[list[int]]:
    """For each worker, the neighbours it sends to when every pair {i, j} with W[i, j] or
    W[j, i] > 0 is given one direction, so that at every worker the sends and receives
    differ by at most one.  The classic construction: join every odd-degree worker to
    one extra vertex (all degrees are then even), split the edges into closed walks
    (from the lowest worker with an unused edge, always along its lowest unused edge: a
    walk on even degrees can only stop where it began) and direct each walk's edges the
    way it went; a closed walk enters each vertex as often as it leaves, and dropping
    the extra edges moves each worker by at most one."""
    n = w.shape[0]
    linked = (w > 0) | (w.T > 0)
    edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(linked, 1)))]
    degree = np.zeros(n, dtype=np.int64)
    for i, j in edges:
        degree[i] += 1
        degree[j] += 1
    edges += [(int(v), n) for v in np.nonzero(degree % 2)[0]]
    incident: list[list[int]] = [[] for _ in range(n + 1)]
    for k, (i, j) in enumerate(edges):
        incident[i].append(k)
        incident[j].append(k)
    used = [False] * len(edges)
    sends: list[list[int]] = [[] for _ in range(n)]
    for start in range(n + 1):
        v = start
        while True:
            k = next((k for k in incident[v] if not used[k]), None)
            if k is None:
                break
            used[k] = True
            u = edges[k][1] if edges[k][0] == v else edges[k][0]
            if u < n and v < n:
                sends[v].append(u)
            v = u
    return [sorted(s) for s in sends]


class Topology:
    """A mixing matrix, static or a function of the step.

    weights: an n x n matrix, or for time-varying graphs a callable step -> matrix
    (with ``period`` steps after which it repeats, used by the checks and the gap).
    """

    def __init__(self, weights: Union[np.ndarray, Callable[[int], np.ndarray]], name: str = "custom",
                 *, period: Optional[int] = None, symmetric: bool = True, n: Optional[int] = None):
        self.name = name
        self.symmetric = symmetric
        if callable(weights):
            if period is None or n is None:
                raise TopologyError("a time-varying topology needs n and period")
            self._fn, self.period, self.n = weights, int(period), int(n)
            self._cache: dict[int, np.ndarray] = {}
            # Each W_t must be doubly stochastic; connectivity only of their union.
            union = np.zeros((self.n, self.n))
            for t in range(self.period):
                wt = check_weights(self._fn(t), symmetric=symmetric, connected=False,
                                   name=f"{name} W_{t}")
                if wt.shape[0] != self.n:
                    raise TopologyError(f"{name} W_{t} has shape {wt.shape}, expected n={self.n}")
                union += wt
            check_weights(union / self.period, symmetric=False, name=f"{name} (union)")
            self._w = None
        else:
            self._w = check_weights(weights, symmetric=symmetric, name=name)
            self.n, self.period, self._fn = self._w.shape[0], 1, None
        self._compare: Optional[list[list[int]]] = None

    @property
    def time_varying(self) -> bool:
        return self._fn is not None

    def weights(self, step: int = 0) -> np.ndarray:
        if self._w is not None:
            return self._w
        key = step % self.period if self.period else step
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = np.asarray(self._fn(key), dtype=np.float64)
        return self._cache[key]

    def in_peers(self, rank: int, step: int = 0) -> list[tuple[int, float]]:
        """(peer, W[rank, peer]) for the workers rank receives from, ascending by peer."""
        w = self.weights(step)
        return [(int(j), float(w[rank, j])) for j in np.nonzero(w[rank])[0] if j != rank]

    def out_peers(self, rank: int, step: int = 0) -> list[int]:
        """The workers whose new value uses rank's value, ascending."""
        w = self.weights(step)
        return [int(k) for k in np.nonzero(w[:, rank])[0] if k != rank]

    def compare_peers(self, rank: int, step: int = 0) -> tuple[list[int], list[int]]:
        """(send to, receive from), ascending: each neighbour pair {i, j} of step ``step``
        (an edge either way) with one direction, for a measurement that is the same seen
        from both ends, such as Moniqua's spread |x_i - x_j|: each pair then sends once,
        where a full exchange sends both ways.  The directions are balanced (sends and
        receives differ by at most one at every worker, ``_balanced_orientation``): on a
        ring every worker sends to its successor only, on a torus to two of its four
        neighbours.  Every worker computes the same directions from W."""
        if self._w is not None:
            if self._compare is None:
                self._compare = _balanced_orientation(self._w)
            sends = self._compare
        else:
            sends = _balanced_orientation(self.weights(step))
        return sends[rank], sorted(i for i in range(self.n) if rank in sends[i])

    def self_weight(self, rank: int, step: int = 0) -> float:
        return float(self.weights(step)[rank, rank])

    def spectral_gap(self) -> float:
        """1 - |second largest eigenvalue| of W (static), or of the product of one period
        of W_t for periodic graphs (then rho is per period, not per step), or of the mean
        of 64 steps' W_t for random matchings."""
        if self._w is not None:
            m = self._w
        elif self.period == 0:  # never repeats (random matchings): the expected W
            m = sum(self.weights(t) for t in range(64)) / 64
        else:
            m = np.eye(self.n)
            for t in range(self.period):
                m = self.weights(t) @ m
        if self.n == 1:
            return 1.0
        if self.symmetric and self._w is not None:
            ev = np.sort(np.abs(np.linalg.eigvalsh(m)))[::-1]
            return float(1.0 - ev[1])
        # Non-symmetric: the contraction of the disagreement is the largest singular
        # value of W - J (J = averaging matrix).
        j = np.full((self.n, self.n), 1.0 / self.n)
        return float(1.0 - np.linalg.svd(m - j, compute_uv=False)[0])

    def _sampled_weights(self) -> list[np.ndarray]:
        """W_t over one period (the one W of a static graph) or, for random matchings,
        64 steps."""
        if self._w is not None:
            return [self._w]
        return [self.weights(t) for t in range(self.period if self.period else 64)]

    @staticmethod
    def _symmetric_mean(ws: list[np.ndarray]) -> np.ndarray:
        m = sum(ws) / len(ws)
        return (m + m.T) / 2

    def noise_factor(self) -> float:
        """S = (1/n) sum over W's eigenvalues l below 1 of 1 / (1 - l): how much noise added
        to every worker each step spreads the models apart in the long run, summed over
        all modes (gossip/theta.py sets Moniqua's default margin from it).  For
        time-varying graphs, of the symmetrized mean of 64 steps' W_t."""
        if self.n == 1:
            return 0.0
        if self._w is not None and self.symmetric:
            m = self._w
        else:
            m = self._symmetric_mean(self._sampled_weights())
        ev = np.sort(np.linalg.eigvalsh(m))[:-1]  # drop the consensus eigenvalue 1
        return float(np.sum(1.0 / np.maximum(1.0 - ev, 1e-12)) / self.n)

    def decode_noise(self) -> float:
        """N = (1/n) tr(L^+ E[(I - W_t)^T (I - W_t)]), L = I - the symmetrized mean W: the
        stationary spread, per worker and per unit gamma sigma^2 / 2, that decode errors of
        variance sigma^2 leave in Moniqua's mix x <- x + gamma (W_t - I)(x + e) (the
        Lyapunov equation L C + C L = gamma sigma^2 E[(I - W_t)^T (I - W_t)] of the
        spread's covariance C, to first order in gamma).  tr(I - W) / n for a static
        symmetric W (2/3 for any ring with weights 1/3); (n - 1) / n for random matchings
        ((I - W_t) is then a projection, so its mean square is L).  gossip/theta.py sets
        Moniqua's default gamma from it."""
        if self.n == 1:
            return 0.0
        ws, eye = self._sampled_weights(), np.eye(self.n)
        lap = eye - self._symmetric_mean(ws)
        q = sum((eye - w).T @ (eye - w) for w in ws) / len(ws)
        return float(np.trace(np.linalg.pinv(lap, hermitian=True) @ q) / self.n)

    def min_eigenvalue(self) -> float:
        """Smallest eigenvalue of a static symmetric W (D2 needs it > -1/3)."""
        if self._w is None or not self.symmetric:
            raise TopologyError("min_eigenvalue needs a static symmetric topology")
        return float(np.linalg.eigvalsh(self._w)[0])

    def __repr__(self) -> str:
        kind = f", period={self.period}" if self.time_varying else ""
        return f"Topology({self.name!r}, n={self.n}{kind})"


def _from_edges(n: int, edges, name: str) -> Topology:
    a = np.zeros((n, n), dtype=bool)
    for i, j in edges:
        if i != j:
            a[i, j] = a[j, i] = True
    return Topology(metropolis_hastings(a), name)


def ring(n: int) -> Topology:
    """Cycle i -- i+1 (mod n), Metropolis-Hastings weights (1/3 each for n >= 3)."""
    _check_n(n)
    return _from_edges(n, [(i, (i + 1) % n) for i in range(n)], f"ring({n})")


def torus(rows: int, cols: Optional[int] = None, n: Optional[int] = None) -> Topology:
    """2-D torus grid rows x cols (rank = r * cols + c), 4 neighbours each."""
    if cols is None:
        rows, cols = _square_factors(rows if n is None else n)
    n = rows * cols
    _check_n(n)
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges.append((i, r * cols + (c + 1) % cols))
            edges.append((i, ((r + 1) % rows) * cols + c))
    return _from_edges(n, edges, f"torus({rows}x{cols})")


def _square_factors(n: int) -> tuple[int, int]:
    r = int(math.isqrt(n))
    while n % r:
        r -= 1
    return r, n // r


def exponential(n: int) -> Topology:
    """Static exponential graph: i -- i + 2^k (mod n) for 2^k < n, both directions."""
    _check_n(n)
    edges, k = [], 1
    while k < n:
        edges += [(i, (i + k) % n) for i in range(n)]
        k *= 2
    return _from_edges(n, edges, f"exponential({n})")


def one_peer_exponential(n: int) -> Topology:
    """Time-varying one-peer exponential graph (Ying et al. 2021): at step t, worker i
    averages with i - 2^(t mod tau) and sends to i + 2^(t mod tau), tau = ceil(log2 n).
    Directed (not symmetric) but doubly stochastic; for n a power of 2 one period of
    tau steps averages exactly."""
    _check_n(n)
    tau = max(1, math.ceil(math.log2(n))) if n > 1 else 1

    def w_at(t):
        w = np.eye(n) * 0.5 if n > 1 else np.eye(1)
        if n > 1:
            hop = 2 ** (t % tau)
            for i in range(n):
                w[i, (i - hop) % n] += 0.5
        return w
    return Topology(w_at, f"one_peer_exponential({n})", period=tau, symmetric=False, n=n)


def random_matching(base: Topology, seed: int = 0) -> Topology:
    """Time-varying pairwise averaging on base's edges (AD-PSGD's pattern, made
    deterministic): at step t the edges are shuffled by a generator seeded with
    (seed, t) and taken greedily into a matching; each matched pair averages with
    weights 1/2, unmatched workers keep their value.  Every worker computes the same
    matching, so no coordination message is needed."""
    if base.time_varying:
        raise TopologyError("random_matching needs a static base topology")
    n = base.n
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if base._w[i, j] > 0]

    def w_at(t):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, t])
        order = rng.permutation(len(edges))
        w, used = np.eye(n), np.zeros(n, dtype=bool)
        for e in order:
            i, j = edges[e]
            if not used[i] and not used[j]:
                used[i] = used[j] = True
                w[i, i] = w[j, j] = w[i, j] = w[j, i] = 0.5
        return w
    # The pattern never repeats; "period" only bounds how many steps the checks sample.
    top = Topology(w_at, f"random_matching({base.name})", period=max(8, 4 * n), n=n)
    top.period = 0  # weights(step) uses the step itself
    return top


def complete(n: int) -> Topology:
    """Every pair connected, W = J (exact averaging in one step)."""
    _check_n(n)
    return Topology(np.full((n, n), 1.0 / n), f"complete({n})")


def star(n: int) -> Topology:
    """Worker 0 is the hub; Metropolis-Hastings weights."""
    _check_n(n)
    return _from_edges(n, [(0, i) for i in range(1, n)], f"star({n})")


def from_adjacency(adjacency, name: str = "graph") -> Topology:
    """An undirected graph (0/1 or bool matrix) with Metropolis-Hastings weights."""
    return Topology(metropolis_hastings(adjacency), name)


def from_weights(weights, name: str = "weights", symmetric: bool = True) -> Topology:
    """A given mixing matrix, checked (doubly stochastic, symmetric, connected)."""
    return Topology(np.asarray(weights, dtype=np.float64), name, symmetric=symmetric)


def from_file(kind: str, path: str, n: int) -> Topology:
    """A topology from a file, for n workers.

    kind 'weights': the n x n mixing matrix, one row per line, numbers separated by
    spaces or commas ('#' starts a comment), or a NumPy .npy file; checked like any
    matrix (doubly stochastic, symmetric, connected).
    kind 'edges': one undirected edge 'i j' per line (ranks from 0), Metropolis-Hastings
    weights; every rank must be below n and the graph connected."""
    import os
    if kind not in ("weights", "edges"):
        raise TopologyError(f"unknown topology file kind {kind!r}; use 'weights:PATH' or "
                            "'edges:PATH'")
    if not os.path.isfile(path):
        raise TopologyError(f"topology file {path!r} does not exist")
    name = f"{kind}:{os.path.basename(path)}"
    if kind == "weights" and path.endswith(".npy"):
        w = np.load(path, allow_pickle=False)
    else:
        rows = []
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                text = line.split("#", 1)[0].replace(",", " ").split()
                if not text:
                    continue
                try:
                    rows.append([float(v) if kind == "weights" else int(v) for v in text])
                except ValueError:
                    raise TopologyError(f"{path}:{lineno}: expected "
                                        f"{'numbers' if kind == 'weights' else 'two ranks i j'}"
                                        f", got {line.strip()!r}") from None
                if kind == "edges" and len(rows[-1]) != 2:
                    raise TopologyError(f"{path}:{lineno}: an edge is two ranks 'i j', got "
                                        f"{line.strip()!r}")
        if kind == "edges":
            bad = [e for e in rows if not (0 <= e[0] < n and 0 <= e[1] < n)]
            if bad:
                raise TopologyError(f"{path}: edge {bad[0]} names a rank outside 0..{n - 1} "
                                    f"({n} workers)")
            return _from_edges(n, rows, name)
        if any(len(r) != len(rows[0]) for r in rows):
            raise TopologyError(f"{path}: the rows of the weight matrix differ in length")
        w = np.array(rows, dtype=np.float64)
    if w.shape != (n, n):
        raise TopologyError(f"{path}: a {'x'.join(map(str, w.shape))} weight matrix for {n} "
                            "workers")
    return Topology(w, name)


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise TopologyError(f"number of workers must be a positive int, got {n!r}")


_NAMED = {"ring": ring, "torus": torus, "exponential": exponential, "exp": exponential,
          "one_peer_exponential": one_peer_exponential, "exp-onepeer": one_peer_exponential,
          "complete": complete, "star": star}


# What a topology spec may be, for the command lines' --topology help.
SPEC_HELP = ("ring, torus (or torus:RxC), exponential, exp-onepeer, complete, star, "
             "weights:FILE (the n x n mixing matrix, a row per line, or .npy) or "
             "edges:FILE (an undirected edge 'i j' per line, Metropolis-Hastings weights)")


def make(spec: Union[str, Topology, np.ndarray, Sequence], n: int) -> Topology:
    """A topology from a name ('ring', 'torus', 'torus:2x4', 'exponential',
    'exp-onepeer', 'complete', 'star'), a file ('weights:PATH', 'edges:PATH', see
    from_file), a Topology, or a weight matrix."""
    if isinstance(spec, Topology):
        if spec.n != n:
            raise TopologyError(f"topology {spec.name} has {spec.n} workers but the process "
                                f"group has {n}")
        return spec
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        if name in ("weights", "edges"):
            return from_file(name, arg, n)
        if name == "torus" and arg:
            try:
                r, c = (int(v) for v in arg.lower().split("x"))
            except ValueError:
                raise TopologyError(f"bad torus spec {spec!r}; use 'torus:ROWSxCOLS'") from None
            if r * c != n:
                raise TopologyError(f"{spec} has {r * c} workers but there are {n}")
            return torus(r, c)
        if name not in _NAMED:
            raise TopologyError(f"unknown topology {spec!r}; use one of {', '.join(_NAMED)}, "
                                "'torus:RxC', 'weights:FILE', 'edges:FILE', a Topology or a "
                                "weight matrix")
        return _NAMED[name](n)
    top = from_weights(spec)
    return make(top, n)
