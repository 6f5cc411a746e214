"""Topologies: weights, checks with clear errors, peers and spectral gaps."""
import math

import numpy as np
import pytest

from moniqua_kernels.gossip import topology as T


def test_ring_weights_and_gap():
    top = T.ring(8)
    w = top.weights()
    assert np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1) and np.allclose(w, w.T)
    assert top.in_peers(0) == [(1, pytest.approx(1 / 3)), (7, pytest.approx(1 / 3))]
    assert top.out_peers(0) == [1, 7]
    # eigenvalues of the 1/3 ring: 1/3 + 2/3 cos(2 pi k / n)
    assert top.spectral_gap() == pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8)))
    assert top.min_eigenvalue() == pytest.approx(-1 / 3)


@pytest.mark.parametrize("make,n,degree", [
    (lambda: T.torus(3, 4), 12, 4), (lambda: T.exponential(8), 8, 5),
    (lambda: T.complete(5), 5, 4), (lambda: T.make("torus:2x4", 8), 8, 3),
    (lambda: T.ring(2), 2, 1)])
def test_static_graphs_are_doubly_stochastic(make, n, degree):
    top = make()
    assert top.n == n
    w = top.weights()
    assert np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1) and np.allclose(w, w.T)
    assert len(top.in_peers(0)) == degree
    assert 0 < top.spectral_gap() <= 1


def test_star_and_complete():
    s = T.star(5)
    assert [p for p, _ in s.in_peers(0)] == [1, 2, 3, 4]
    assert [p for p, _ in s.in_peers(3)] == [0]
    assert T.complete(6).spectral_gap() == pytest.approx(1.0)


def test_one_peer_exponential_averages_exactly_in_one_period():
    top = T.one_peer_exponential(8)
    assert top.time_varying and top.period == 3
    assert [p for p, _ in top.in_peers(0, 0)] == [7]
    assert top.out_peers(0, 0) == [1]
    assert [p for p, _ in top.in_peers(0, 2)] == [4]
    prod = np.eye(8)
    for t in range(3):
        prod = top.weights(t) @ prod
    assert np.allclose(prod, np.full((8, 8), 1 / 8))
    assert top.spectral_gap() == pytest.approx(1.0)


def test_random_matching_is_a_matching_on_the_base_edges():
    base = T.ring(6)
    top = T.random_matching(base, seed=3)
    for t in range(20):
        w = top.weights(t)
        assert np.allclose(w.sum(1), 1) and np.allclose(w, w.T)
        for i in range(6):
            peers = top.in_peers(i, t)
            assert len(peers) <= 1
            for j, wij in peers:
                assert base.weights()[i, j] > 0 and wij == 0.5
    assert not np.array_equal(top.weights(0), top.weights(1)) or not np.array_equal(
        top.weights(1), top.weights(2))
    assert 0 < top.spectral_gap() < base.spectral_gap()


def test_metropolis_hastings_from_adjacency():
    a = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]])
    top = T.from_adjacency(a)
    w = top.weights()
    assert w[0, 1] == pytest.approx(1 / 3) and w[2, 3] == pytest.approx(1 / 4)
    assert np.allclose(w.sum(1), 1) and np.allclose(w, w.T)


@pytest.mark.parametrize("w,match", [
    ([[0.5, 0.5], [0.4, 0.6]], "not doubly stochastic|not symmetric"),
    ([[0.6, 0.5], [0.4, 0.5]], "not row stochastic"),
    ([[1.5, -0.5], [-0.5, 1.5]], "negative"),
    ([[1, 0], [0, 1]], "not connected"),
    ([[0.5, 0.5, 0], [0.5, 0.5, 0]], "square"),
    ([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]], "not symmetric"),
    ([[float("nan"), 1], [1, 0]], "non-finite"),
])
def test_bad_weights_refused(w, match):
    with pytest.raises(T.TopologyError, match=match):
        T.from_weights(w)


def test_noise_factor():
    """S = (1/n) sum of 1 / (1 - l) over the non-consensus eigenvalues: ring of 4 with
    weights 1/3 has l = 1/3, 1/3, -1/3, so S = (1.5 + 1.5 + 0.75) / 4; the complete graph
    (W = J) has l = 0 n - 1 times."""
    assert T.ring(4).noise_factor() == pytest.approx(3.75 / 4)
    assert T.complete(5).noise_factor() == pytest.approx(4 / 5)
    assert T.ring(8).noise_factor() > T.ring(4).noise_factor()
    assert T.random_matching(T.ring(8), 0).noise_factor() > T.ring(8).noise_factor()


def test_row_but_not_column_stochastic_refused_by_the_column_check():
    """Rows sum to 1, column 1 to 1.5: gossip with it would not keep the average.  Not
    symmetric either, so the symmetric check is off here: only the column check can
    refuse it, and the test names exactly that refusal."""
    w = [[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]]
    with pytest.raises(T.TopologyError, match=r"not doubly stochastic: column 1 sums to 1\.5"):
        T.from_weights(w, symmetric=False)
    with pytest.raises(T.TopologyError, match=r"not doubly stochastic: column 1"):
        T.Topology(lambda t: w, "directed", period=2, symmetric=False, n=3)


def test_bad_specs_refused():
    with pytest.raises(T.TopologyError, match="unknown topology"):
        T.make("hypercube", 8)
    with pytest.raises(T.TopologyError, match="has 6 workers"):
        T.make("torus:2x3", 8)
    with pytest.raises(T.TopologyError, match="has 4 workers"):
        T.make(T.ring(4), 8)
    with pytest.raises(T.TopologyError, match="not symmetric"):
        T.from_adjacency([[0, 1], [0, 0]])
    with pytest.raises(T.TopologyError, match="positive int"):
        T.ring(0)
