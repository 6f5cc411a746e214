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


def test_decode_noise():
    """N = tr(L^+ E[(I - W_t)^T (I - W_t)]) / n: tr(I - W) / n for a static symmetric W
    (2/3 for every ring with weights 1/3), (n - 1) / n for random matchings (I - W_t is a
    projection)."""
    for n in (3, 4, 8, 16):
        assert T.ring(n).decode_noise() == pytest.approx(2 / 3)
    assert T.complete(5).decode_noise() == pytest.approx(4 / 5)
    for top in (T.torus(2, 4), T.star(6), T.exponential(8)):
        assert top.decode_noise() == pytest.approx(np.trace(np.eye(top.n) - top.weights(0))
                                                   / top.n)
    for n in (4, 8):
        assert T.random_matching(T.ring(n), 0).decode_noise() == pytest.approx((n - 1) / n)


def test_default_gamma_from_decode_noise():
    """gamma = GAMMA_C / (N (eps margin)^2): 0.020 on every ring at 1 bit (margin 2), the
    matchings below it, 2 bits ~0.18, 4 and 8 bits 1 (theta.py's measurements)."""
    from moniqua_kernels.gossip import theta as th
    for n in (4, 8, 16):
        top = T.ring(n)
        margin = th.default_margin(1, "dither", top.noise_factor())
        assert margin == 2.0
        assert th.default_gamma(1, "dither", top.decode_noise(), margin) == \
            pytest.approx(0.053 / (2 / 3) / 4)
        assert th.default_gamma(2, "dither", top.decode_noise(), 2.0) == \
            pytest.approx(0.053 / (2 / 3) / (2 / 3) ** 2)
        for bits in (4, 8):
            s = top.noise_factor()
            assert th.default_gamma(bits, "dither", top.decode_noise(),
                                    th.default_margin(bits, "dither", s)) == 1.0
    rm8 = T.random_matching(T.ring(8), 0)
    assert th.default_gamma(1, "dither", rm8.decode_noise(), 2.0) == \
        pytest.approx(0.053 / 0.875 / 4)


def test_decode_noise_matches_simulation():
    """The stationary spread of x <- x + gamma (W_t - I)(x + e), iid e of variance 1, is
    gamma N / 2 per worker to first order in gamma (measured 0.337, 0.445 per gamma for
    ring(8) and its matching with 200 coordinates; here fewer, to 10%)."""
    rng = np.random.default_rng(0)
    gamma, dim = 0.02, 64
    for top in (T.ring(8), T.random_matching(T.ring(8), 0)):
        x, acc, count = np.zeros((8, dim)), 0.0, 0
        for t in range(6000):
            w = top.weights(t)
            x = x + gamma * (w - np.eye(8)) @ (x + rng.uniform(-3 ** 0.5, 3 ** 0.5, (8, dim)))
            if t >= 1500:
                acc += ((x - x.mean(0)) ** 2).sum(1).mean() / dim
                count += 1
        assert acc / count / gamma == pytest.approx(top.decode_noise() / 2, rel=0.1), top.name


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


@pytest.mark.parametrize("make,steps", [
    (lambda: T.ring(2), 1), (lambda: T.ring(3), 1), (lambda: T.ring(8), 1),
    (lambda: T.torus(3, 4), 1), (lambda: T.make("torus:2x4", 8), 1),
    (lambda: T.exponential(8), 1), (lambda: T.complete(6), 1), (lambda: T.complete(7), 1),
    (lambda: T.star(5), 1), (lambda: T.one_peer_exponential(8), 3),
    (lambda: T.random_matching(T.ring(6), seed=3), 8),
    (lambda: T.from_adjacency(_PETAL), 1)],
    ids=["ring2", "ring3", "ring8", "torus3x4", "torus2x4", "exponential8", "complete6",
         "complete7", "star5", "exp-onepeer8", "matching6", "odd-degrees"])
def test_compare_peers_orients_each_pair_once(make, steps):
    """Moniqua's spread check sends over each neighbour pair once: every pair {i, j}
    that exchanges at a step (either way, directed graphs too) is one send i -> j that
    j expects as a receive from i, and nothing else; at every worker the sends and the
    receives differ by at most one (a ring's workers each send to their successor)."""
    top = make()
    for t in range(steps):
        w = top.weights(t)
        pairs = {frozenset((i, j)) for i in range(top.n) for j in range(top.n)
                 if i != j and (w[i, j] > 0 or w[j, i] > 0)}
        arrows = set()
        for i in range(top.n):
            sends, recvs = top.compare_peers(i, t)
            assert not set(sends) & set(recvs)
            assert abs(len(sends) - len(recvs)) <= 1, (i, sends, recvs)
            arrows |= {(i, j) for j in sends}
            for j in recvs:
                assert i in top.compare_peers(j, t)[0]
        assert {frozenset(a) for a in arrows} == pairs and len(arrows) == len(pairs)
    if top.name.startswith("ring") and top.n > 2:
        assert all(top.compare_peers(i)[0] == [(i + 1) % top.n] for i in range(top.n))


# a hub joined to two triangles and a tail: degrees 4, 2, 2, 2, 2, 1 and 3 (odd ones)
_PETAL = np.zeros((7, 7), dtype=bool)
for _i, _j in [(0, 1), (0, 2), (1, 2), (0, 3), (0, 4), (3, 4), (4, 5), (4, 6)]:
    _PETAL[_i, _j] = _PETAL[_j, _i] = True


@pytest.mark.parametrize("true,scale", [(0.3, 0.3), (1e-3, 2.0), (5e-6, 2.0), (0.0, 1.0),
                                        (0.0, 0.0), (4.0, 2.0)])
def test_bound_look_spread_never_wraps_and_resolves_an_eighth(true, scale):
    """Looks from the bound 2 max|x| (theta.bound_look_spread): every modulus asked for is
    above twice the true spread plus the codes' rounding (no wrap), the answer is within
    its resolution of the truth, the resolution is at most an eighth of the spread
    unless the modulus hit its floor (identical models: FINE_FLOOR x max|x|), and it
    takes at most three looks."""
    from moniqua_kernels.gossip import theta as theta_mod
    rng = np.random.default_rng(0)
    asked = []

    def look(modulus):   # what 8-bit codes read: the truth to within modulus / 512
        asked.append(modulus)
        assert true + modulus / 512 < modulus / 2
        return max(0.0, true + modulus / 512 * rng.uniform(-1, 1))
    spread, resolution = theta_mod.bound_look_spread(2 * scale, scale, look)
    assert len(asked) <= 3 and abs(spread - true) <= resolution
    if scale == 0:
        assert asked == [] and (spread, resolution) == (0.0, 0.0)
    elif asked[-1] > theta_mod.FINE_FLOOR * scale:
        assert resolution <= spread / 8
    else:
        assert resolution == theta_mod.FINE_FLOOR * scale / 512
