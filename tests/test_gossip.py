"""Gossip algorithms through the in-memory transport (threads): the update rules,
exact byte counts, consensus, theta monitor, refusals and peer errors."""
import math
import threading

import numpy as np
import pytest
import torch

import moniqua_kernels as mk
from moniqua_kernels import gossip
from moniqua_kernels.compressors import QSGD, Compose, ScaledSign, TopK
from moniqua_kernels.gossip import topology as T
from moniqua_kernels.reference.packing import packed_nbytes

N_ELEM = 300


def run_workers(n, fn, timeout=20.0):
    """fn(rank, transport) in n threads over one InMemoryNetwork; returns the results."""
    mk.available("moniqua_encode", "cpu")  # load backends before threads use them
    net = gossip.InMemoryNetwork(n, timeout)
    out, errs = [None] * n, [None] * n

    def work(r):
        try:
            out[r] = fn(r, net.transport(r))
        except BaseException as exc:  # noqa: BLE001
            errs[r] = exc
            net.fail(str(exc))
    ths = [threading.Thread(target=work, args=(r,)) for r in range(n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    for e in errs:
        if e is not None and not isinstance(e, gossip.PeerError):
            raise e
    for e in errs:
        if e is not None:
            raise e
    return out


def start_values(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(N_ELEM, generator=g) for _ in range(n)]


def param(x):
    return torch.nn.Parameter(x.clone())


def test_dpsgd_one_step_is_w_times_x():
    n, top = 5, T.ring(5)
    xs = start_values(n)

    def fn(r, tr):
        p = param(xs[r])
        g = gossip.DPSGD([p], top, transport=tr, sync_params=False)
        g.step()
        return p.detach().clone(), g.last_bytes_sent
    res = run_workers(n, fn)
    x = torch.stack(xs).double()
    expect = torch.tensor(top.weights()) @ x
    for r, (got, nbytes) in enumerate(res):
        torch.testing.assert_close(got.double(), expect[r], atol=1e-6, rtol=0)
        assert nbytes == 2 * N_ELEM * 4  # two out-peers, raw float32
    assert torch.stack([g for g, _ in res]).mean(0).allclose(x.mean(0).float(), atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_moniqua_step_within_error_bound_of_exact_mixing(bits):
    n, top, theta, gamma = 4, T.ring(4), 0.5, 0.7
    base = torch.randn(N_ELEM, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    xs = [base + theta * (torch.rand(N_ELEM, generator=g) - 0.5) for _ in range(n)]
    assert max(float((a - b).abs().max()) for a in xs for b in xs) <= theta

    def fn(r, tr):
        p = param(xs[r])
        g = gossip.Moniqua([p], top, transport=tr, theta=theta, bits=bits, gamma=gamma,
                           sync_params=False, seed=5, monitor=False)
        g.step()
        return p.detach().clone(), g.last_bytes_sent
    res = run_workers(n, fn)
    w = torch.tensor(top.weights(), dtype=torch.float64)
    x = torch.stack(xs).double()
    exact = x + gamma * (w @ x - x)
    err = mk.moniqua_modulus(theta, bits, "dither") * mk.moniqua_delta(bits, "dither")
    for r, (got, nbytes) in enumerate(res):
        # each of the (deg) differences dec(q_j) - dec(q_i) is off by at most 2 err
        bound = gamma * (1 - w[r, r]) * 2 * err + 1e-5
        assert float((got.double() - exact[r]).abs().max()) <= bound
        assert nbytes == 2 * packed_nbytes(N_ELEM, bits)


def _pure_gossip(make, n=6, steps=30, top="ring", scale=1.0):
    xs = start_values(n, 3, scale)

    def fn(r, tr):
        p = param(xs[r])
        g = make([p], T.make(top, n), tr)
        d0 = g.consensus_distance()
        sent = []
        for _ in range(steps):
            g.step()
            sent.append(g.last_bytes_sent)
        return d0, g.consensus_distance(), p.detach().clone(), sent, g
    return xs, run_workers(n, fn)


@pytest.mark.parametrize("name,make", [
    ("dpsgd", lambda ps, top, tr: gossip.DPSGD(ps, top, transport=tr, sync_params=False)),
    ("allreduce", lambda ps, top, tr: gossip.AllReduce(ps, transport=tr, sync_params=False)),
    ("moniqua", lambda ps, top, tr: gossip.Moniqua(ps, top, transport=tr, theta=8.0, bits=8,
                                                   gamma=0.5, sync_params=False)),
    ("moniqua-d2", lambda ps, top, tr: gossip.Moniqua(
        ps, T.from_weights(0.5 * np.eye(top.n) + 0.5 * top.weights()), transport=tr,
        theta=8.0, bits=8, gamma=0.5, variant="d2", sync_params=False)),
    ("moniqua-adpsgd", lambda ps, top, tr: gossip.Moniqua(
        ps, top, transport=tr, theta=8.0, bits=8, variant="adpsgd", asynchronous=False,
        sync_params=False)),
    ("adpsgd-sync", lambda ps, top, tr: gossip.ADPSGD(ps, top, transport=tr,
                                                      asynchronous=False, sync_params=False)),
    ("choco", lambda ps, top, tr: gossip.Choco(ps, top, transport=tr, compressor="qsgd:4",
                                               gamma=0.5, sync_params=False)),
    ("squarm", lambda ps, top, tr: gossip.SQuARM(ps, top, transport=tr, gamma=0.5, H=2,
                                                 compressor="topk:0.3+qsgd:8",
                                                 sync_params=False)),
])
def test_consensus_distance_falls(name, make):
    xs, res = _pure_gossip(make, steps=60 if "adpsgd" in name else 30)
    before, after = res[0][0], res[0][1]
    assert before > 1.0
    assert after < 0.05 * before, (name, before, after)
    # without gradients, gossip keeps the average (up to the compression error)
    mean0 = torch.stack(xs).mean(0)
    mean1 = torch.stack([r[2] for r in res]).mean(0)
    tol = 1e-4 if name in ("dpsgd", "allreduce", "adpsgd-sync") else 0.1
    assert float((mean1 - mean0).abs().max()) < tol


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_moniqua_mix_preserves_the_network_average_exactly(bits):
    """Every receiver decodes q_j to the same value r_j (the representative of the codes
    within theta of its own model), and the mix subtracts the decoded *own* payload r_i,
    not x_i: sum_i sum_j W_ij (r_j - r_i) = 0 for doubly stochastic W.  So the average
    moves only by float32 rounding, though each model moves by up to gamma delta B."""
    n, theta = 5, 0.5
    base = torch.randn(N_ELEM, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(12)
    xs = [base + 0.2 * theta * (torch.rand(N_ELEM, generator=g) - 0.5) for _ in range(n)]

    def fn(r, tr):
        p = param(xs[r])
        # The premise, |x_i - x_j| <= theta at every step, is checked at every step: a
        # violation would raise (raise_after=1).  1-bit noise is +-theta, so gamma 0.1.
        g = gossip.Moniqua([p], T.ring(n), transport=tr, theta=theta, bits=bits, gamma=0.1,
                           sync_params=False, seed=3,
                           monitor=gossip.ThetaMonitor(every=1, raise_after=1))
        moved = 0.0
        for _ in range(4):
            before = p.detach().clone()
            g.step()
            moved = max(moved, float((p.detach() - before).abs().max()))
        return p.detach().clone(), moved
    res = run_workers(n, fn)
    mean0 = torch.stack(xs).double().mean(0)
    mean1 = torch.stack([x for x, _ in res]).double().mean(0)
    drift = float((mean1 - mean0).abs().max())
    assert drift < 2e-6, drift                     # a few float32 ulps of |x| ~ 3, 4 steps
    assert max(m for _, m in res) > 1000 * drift   # while the models themselves moved


class _Recorder:
    """A transport wrapper that keeps every payload sent to peer ``to``, by tag."""

    def __init__(self, inner, to):
        self._inner, self._to, self.sent = inner, to, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def exchange(self, sends, recvs, tag=0):
        self.sent += [buf.clone() for peer, buf in sends if peer == self._to and tag < 1 << 20]
        return self._inner.exchange(sends, recvs, tag)


@pytest.mark.parametrize("make,raw_values", [
    (lambda ps, tr: gossip.Moniqua(ps, "ring", transport=tr, theta=1.0, bits=1, gamma=1e-6,
                                   monitor=False), False),
    (lambda ps, tr: gossip.Choco(ps, "ring", transport=tr, compressor="qsgd:2", gamma=1e-6),
     False),
    (lambda ps, tr: gossip.Choco(ps, "ring", transport=tr, compressor="randomk:0.5",
                                 gamma=1e-6), True),
], ids=["moniqua-dither", "choco-qsgd", "choco-randomk"])
def test_payload_streams_change_from_step_to_step(make, raw_values):
    """The models barely move (gamma 1e-6), so only fresh random streams make consecutive
    payloads differ: 1-bit dither flips about half of the bits, QSGD's stochastic levels
    and random-k's masks change.  A seed that stopped depending on the step would send
    (nearly) the same bytes every step, and the rounding errors would stop averaging out."""
    n = 3
    xs = start_values(n, 13)

    def fn(r, tr):
        rec = _Recorder(tr, (r + 1) % n)
        p = param(xs[r])
        g = make([p], rec)
        for _ in range(3):
            if isinstance(g, gossip.Choco):
                g._xhat[0].zero_()          # C(x - xhat) = C(x): the same input each step
            g.step()
        return rec.sent
    for sent in run_workers(n, fn):
        assert len(sent) == 3
        for a, b in zip(sent, sent[1:]):
            if a.numel() != b.numel():
                continue  # random-k: a new mask kept another number of elements
            if raw_values:  # float32 values: the same mask would differ only by ~1e-6
                differ = float(((a.view(torch.float32) - b.view(torch.float32)).abs() > 1e-3)
                               .float().mean())
            else:
                differ = float((a != b).float().mean())
            assert differ > 0.2, differ


def test_bytes_match_the_formulas():
    n = 4
    sign, q4 = ScaledSign(), QSGD(4)
    # CHOCO: every step sends C(x - xhat) to both ring neighbours
    _, res = _pure_gossip(lambda ps, top, tr: gossip.Choco(ps, top, transport=tr,
                                                             compressor="sign",
                                                             sync_params=False), n=n, steps=3)
    assert res[0][3] == [2 * (4 + math.ceil(N_ELEM / 8))] * 3
    assert sign.nbytes(N_ELEM) == 4 + math.ceil(N_ELEM / 8)
    _, res = _pure_gossip(lambda ps, top, tr: gossip.Choco(ps, top, transport=tr,
                                                             compressor=q4,
                                                             sync_params=False), n=n, steps=2)
    assert res[0][3] == [2 * (4 * math.ceil(N_ELEM / 512) + math.ceil(N_ELEM * 4 / 8))] * 2
    # SQuARM, H=2, threshold 0: sync steps send a 1-byte flag + the payload to 2 peers
    comp = Compose(TopK(0.1), QSGD(4))
    _, res = _pure_gossip(lambda ps, top, tr: gossip.SQuARM(ps, top, transport=tr,
                                                              compressor=comp, H=2,
                                                              sync_params=False), n=n, steps=4)
    k = math.ceil(0.1 * N_ELEM)
    payload = 4 * k + 4 + math.ceil(k * 4 / 8)  # int32 indices, one scale, 4-bit codes
    assert comp.nbytes(N_ELEM) == payload
    assert res[0][3] == [0, 2 * (1 + payload), 0, 2 * (1 + payload)]
    # all-reduce: ring formula
    _, res = _pure_gossip(lambda ps, top, tr: gossip.AllReduce(ps, transport=tr,
                                                                 sync_params=False),
                          n=n, steps=1)
    assert res[0][3] == [math.ceil(2 * (n - 1) * N_ELEM * 4 / n)]


def test_squarm_event_trigger_skips_small_changes():
    n = 4

    def fn(r, tr):
        p = param(torch.ones(N_ELEM))
        g = gossip.SQuARM([p], "ring", transport=tr, threshold=1.0, lr=0.1, H=1,
                          compressor="qsgd:8")
        g.step()                         # xhat = 0, ||x||^2 = 300 > 0.01: sends
        first = g.last_bytes_sent
        with torch.no_grad():
            p.add_(1e-4)                 # ||x - xhat||^2 tiny: no payload, only flags
        g.step()
        return first, g.last_bytes_sent, g.triggers
    for first, second, triggers in run_workers(n, fn):
        assert first == 2 * (1 + QSGD(8).nbytes(N_ELEM))
        assert second == 2 * 1 and triggers == 1


def test_choco_replicas_stay_consistent():
    """xhat_j kept by j's neighbours equals j's own xhat: s_i = sum_j W_ij xhat_j."""
    n, top = 5, T.ring(5)
    xs = start_values(n, 4)

    def fn(r, tr):
        p = param(xs[r])
        g = gossip.Choco([p], top, transport=tr, compressor="topk:0.2", gamma=0.3,
                         sync_params=False)
        for _ in range(5):
            with torch.no_grad():
                p.add_(0.01 * r)          # a local "optimizer step"
            g.step()
        return g._xhat[0].clone(), g._s[0].clone()
    res = run_workers(n, fn)
    xhat = torch.stack([x for x, _ in res]).double()
    s = torch.tensor(top.weights()) @ xhat
    for r, (_, s_r) in enumerate(res):
        torch.testing.assert_close(s_r.double(), s[r], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,make", [
    ("choco", lambda ps, tr: gossip.Choco(ps, "ring", transport=tr, compressor="identity",
                                          gamma=1.0, sync_params=False)),
    ("dcd", lambda ps, tr: gossip.DCD(ps, "ring", transport=tr, compressor="identity",
                                      sync_params=False)),
    ("deepsqueeze", lambda ps, tr: gossip.DeepSqueeze(ps, "ring", transport=tr,
                                                      compressor="identity",
                                                      sync_params=False)),
])
def test_replicated_sums_of_a_low_precision_model_do_not_drift(name, make, dtype):
    # The running sums must round alike on every worker: held in the model's bfloat16,
    # CHOCO's workers' mean moved by 5 in 100 pure-gossip steps (identity compressor)
    n, steps = 4, 200
    xs = start_values(n, 5)

    def fn(r, tr):
        p = torch.nn.Parameter(xs[r].to(dtype))
        g = make([p], tr)
        for _ in range(steps):
            g.step()
        return p.detach().float(), g
    res = run_workers(n, fn)
    mean0 = torch.stack([x.to(dtype).float() for x in xs]).mean(0)
    mean1 = torch.stack([x for x, _ in res]).mean(0)
    # D-PSGD itself moves the mean by rounding each step's result to the model's dtype:
    # 9e-3 in bfloat16 over these steps; drifting sums gave 5 and more
    assert float((mean1 - mean0).abs().max()) < 0.05, name
    assert getattr(res[0][1], res[0][1]._STATE_TENSORS[0])[0].dtype == torch.float32


def test_begin_end_equals_step_and_flat_views_follow_the_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    net = gossip.InMemoryNetwork(1)
    g = gossip.DPSGD(model, "ring", transport=net.transport(0), bucket_numel=12)
    # 12 + 3 > 12 starts a new bucket at the bias
    assert [b.numel for b in g.buckets] == [12, 3 + 6 + 2]
    # every bucket starts 16-byte aligned (the GPU kernels' vector paths), a parameter
    # boundary or not: per_layer puts the 3-element bias's bucket at element 12, and the
    # next weight's at 16, not 15
    per_layer = gossip.DPSGD(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)),
                             "ring", transport=net.transport(0), per_layer=True)
    for gg in (g, per_layer):
        assert all(b.tensor.data_ptr() % 16 == 0 for b in gg.buckets)
    assert [b.start for b in per_layer.buckets] == [0, 12, 16, 24]
    assert [b.numel for b in per_layer.buckets] == [12, 3, 6, 2]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    # the optimizer wrote through the views into the flat buffer
    assert torch.equal(g.flat.flat()[:12], model[0].weight.detach().reshape(-1))
    with pytest.raises(RuntimeError, match="without begin"):
        g.end()
    g.begin()
    with pytest.raises(RuntimeError, match="twice"):
        g.begin()
    g.end()
    assert g.step_count == 1


def test_parameters_sharing_memory_are_refused_and_tied_ones_kept_tied():
    net = gossip.InMemoryNetwork(1)
    enc, dec = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    dec.weight = torch.nn.Parameter(enc.weight.data)        # tied through .data
    transposed = torch.nn.Parameter(torch.randn(3, 5))
    for params in ([*enc.parameters(), *dec.parameters()],
                   [transposed, torch.nn.Parameter(transposed.data.t())]):
        with pytest.raises(ValueError, match="share memory.*one Parameter object"):
            gossip.DPSGD(params, "ring", transport=net.transport(0))
    dec.weight = enc.weight                                   # tied as one object
    model = torch.nn.ModuleList([enc, dec])
    gossip.DPSGD(model, "ring", transport=net.transport(0))
    with torch.no_grad():
        enc.weight.add_(1.0)
    assert dec.weight is enc.weight and torch.equal(dec.weight, enc.weight)
    gossip.DPSGD(model, "ring", transport=net.transport(0))  # over flat views: disjoint


def test_theta_monitor_warns_on_violation():
    n = 4
    xs = start_values(n, 5, scale=3.0)   # spread ~ 10 >> theta

    def fn(r, tr):
        p = param(xs[r])
        mon = gossip.ThetaMonitor(every=1, raise_after=None)
        g = gossip.Moniqua([p], "ring", transport=tr, theta=0.1, bits=2, monitor=mon,
                           sync_params=False)
        g.step()
        return mon.history[0], mon.violations
    # pytest.warns swaps the process-wide warning hook, so it sees the worker threads'
    with pytest.warns(gossip.ThetaViolation, match="violated") as record:
        res = run_workers(n, fn)
    assert sum(issubclass(w.category, gossip.ThetaViolation) for w in record) == 1  # rank 0
    true_max = max(float((xs[i] - xs[j]).abs().max()) for i in range(n) for j in
                   ((i + 1) % n, (i - 1) % n))
    for (step, measured, theta), violations in res:
        # the first look is 8-bit codes at a modulus no spread can wrap, read to within
        # an eighth of the spread (theta.bound_look_spread)
        assert measured == pytest.approx(true_max, rel=1 / 8) and theta == 0.1
        assert violations == 1


@pytest.mark.parametrize("top", ["ring", "torus:3x4"])
def test_theta_check_compares_each_pair_once(top):
    """|x_i - x_j| is the same from both ends, so a check sends over each neighbour pair
    once (Topology.compare_peers): a check step's bytes are the 1-bit payload to every
    neighbour plus, per look, 8-bit codes to half of them and a 2-float max all-reduce
    (the first check: a max |x| all-reduce, then looks from the bound 2 max |x|; the
    second: one look at CHECK_MODULUS x theta); every worker still sees the max over
    every edge, to within the look's resolution."""
    from moniqua_kernels.gossip.base import ring_allreduce_bytes
    from moniqua_kernels.gossip.moniqua import CHECK_MODULUS
    n, theta = 12, 0.5
    topo = T.make(top, n)
    xs = start_values(n, 17, scale=0.05)

    def fn(r, tr):
        p = param(xs[r])
        mon = gossip.ThetaMonitor(every=1, raise_after=None)
        g = gossip.Moniqua([p], topo, transport=tr, theta=theta, bits=1, gamma=0.2,
                           monitor=mon, sync_params=False)
        before, sent = [], []
        for _ in range(2):
            before.append(p.detach().clone())
            g.step()
            sent.append(g.last_bytes_sent)
        return before, sent, mon.history
    res = run_workers(n, fn)
    edges = [(i, j) for i in range(n) for j, _ in topo.in_peers(i)]
    degree = len(topo.in_peers(0))
    look = degree // 2 * N_ELEM + ring_allreduce_bytes(8, n)     # codes to half, max-reduce
    for step, scalar_reduce in [(0, ring_allreduce_bytes(4, n)), (1, 0)]:
        true = max(float((res[i][0][step] - res[j][0][step]).abs().max()) for i, j in edges)
        for before, sent, history in res:
            assert history[step][0] == step
            if step == 1:   # one look at the theta in use
                assert abs(history[step][1] - true) <= CHECK_MODULUS * theta / 512
            else:
                assert history[step][1] == pytest.approx(true, rel=1 / 8)
        checks = {sent[step] - degree * packed_nbytes(N_ELEM, 1) - scalar_reduce
                  for _, sent, _ in res}
        assert len(checks) == 1                                      # balanced
        looks, rest = divmod(checks.pop(), look)
        assert rest == 0 and looks == 1, (looks, rest)


def test_theta_monitor_quiet_when_bound_holds_and_lr_schedule():
    n = 4
    xs = [torch.full((N_ELEM,), 0.01 * r) for r in range(n)]
    opt_lr = {"lr": 0.5}
    sched = gossip.LRProportional(2.0, lambda step: opt_lr["lr"])

    def fn(r, tr):
        p = param(xs[r])
        mon = gossip.ThetaMonitor(every=4)
        g = gossip.Moniqua([p], "ring", transport=tr, theta=sched, bits=8, monitor=mon,
                           sync_params=False)
        for _ in range(5):
            g.step()
        return mon.history, mon.violations, g.theta
    for history, violations, theta in run_workers(n, fn):
        # checks at every step below min(8, every=4), then multiples of 4
        assert [h[0] for h in history] == [0, 1, 2, 3, 4] and violations == 0 and theta == 1.0
        # ranks 0 and 3 are neighbours; an 8-bit look resolves an eighth of the spread
        assert history[0][1] == pytest.approx(0.03, rel=1 / 8)


def test_refusals():
    net = gossip.InMemoryNetwork(4)
    p = [param(torch.zeros(8))]
    with pytest.raises(T.TopologyError, match="static topology"):
        gossip.Choco(p, "exp-onepeer", transport=net.transport(0), sync_params=False)
    with pytest.raises(ValueError, match="receiver's own model"):
        gossip.Choco(p, "ring", transport=net.transport(0), compressor="moniqua:2",
                     sync_params=False)
    with pytest.raises(ValueError, match="variant"):
        gossip.Moniqua(p, "ring", transport=net.transport(0), variant="d3", sync_params=False)
    with pytest.raises(ValueError, match="stochastic"):
        gossip.Moniqua(p, "ring", transport=net.transport(0), bits=1, rounding="stochastic",
                       sync_params=False)
    with pytest.raises(ValueError, match="lr"):
        gossip.SQuARM(p, "ring", transport=net.transport(0), threshold=1.0, sync_params=False)
    with pytest.raises(T.TopologyError, match="has 8 workers"):
        gossip.DPSGD(p, T.ring(8), transport=net.transport(0), sync_params=False)
    with pytest.raises(T.TopologyError, match="not doubly stochastic|not row"):
        gossip.DPSGD(p, np.full((4, 4), 0.3), transport=net.transport(0), sync_params=False)


def test_missing_peer_raises_peer_error_naming_it():
    """Workers 1 and 2 are built (the handshake needs them) but never step."""
    net = gossip.InMemoryNetwork(3, timeout=0.5)

    def build(r):
        return gossip.DPSGD([param(torch.zeros(8))], "ring", transport=net.transport(r),
                            sync_params=False)
    others = [threading.Thread(target=build, args=(r,)) for r in (1, 2)]
    for t in others:
        t.start()
    g = build(0)
    for t in others:
        t.join()
    with pytest.raises(gossip.PeerError, match=r"rank 0: exchange with peer\(s\) \[1\]"):
        g.step()
    # and a worker that never shows up is named by the handshake itself
    with pytest.raises(gossip.PeerError, match=r"rank 0: all_gather with peer\(s\) \[1\]"):
        build(0)


def test_stream_seed_is_deterministic_and_distinct():
    s = gossip.stream_seed
    assert s(0, 1, 2) == s(0, 1, 2)
    seen = {s(seed, r, t, p) for seed in range(3) for r in range(4) for t in range(50)
            for p in range(3)}
    assert len(seen) == 3 * 4 * 50 * 3
    assert all(-(2 ** 63) <= v < 2 ** 63 for v in seen)


def test_time_varying_one_peer_exponential_averages_exactly():
    """Directed, time-varying graph: sends and receives go to different peers; for n = 8
    three steps of D-PSGD reach the exact average (up to float32 rounding)."""
    n = 8
    xs = start_values(n, 6)

    def fn(r, tr):
        p = param(xs[r])
        g = gossip.DPSGD([p], "exp-onepeer", transport=tr, sync_params=False)
        sent = []
        for _ in range(3):
            g.step()
            sent.append(g.last_bytes_sent)
        return p.detach().clone(), sent
    res = run_workers(n, fn)
    mean = torch.stack(xs).mean(0)
    for got, sent in res:
        torch.testing.assert_close(got, mean, atol=1e-6, rtol=0)
        assert sent == [N_ELEM * 4] * 3  # one peer per step


def test_buckets_use_consecutive_stream_offsets():
    """Three 100-element buckets draw the same dither stream positions as one bucket of
    300, so the results are bit-identical (bucket sizes are multiples of 4)."""
    n = 4
    xs = start_values(n, 7)

    def fn(bucket_numel):
        def f(r, tr):
            ps = [param(c) for c in xs[r].split(100)]
            g = gossip.Moniqua(ps, "ring", transport=tr, theta=10.0, bits=1, gamma=0.5,
                               bucket_numel=bucket_numel, sync_params=False, seed=9,
                               monitor=False)
            for _ in range(3):
                g.step()
            return torch.cat([p.detach() for p in ps]), len(g.buckets), g.bytes_sent
        return f
    one, three = run_workers(n, fn(None)), run_workers(n, fn(100))
    for (a, na, ba), (b, nb, bb) in zip(one, three):
        assert (na, nb) == (1, 3) and torch.equal(a, b)
        assert ba == 3 * 2 * packed_nbytes(300, 1) and bb == 3 * 2 * 3 * packed_nbytes(100, 1)


class _PointerLog:
    """A transport wrapper that notes the storage of every payload sent and received."""

    def __init__(self, inner):
        self._inner, self.steps = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def exchange(self, sends, recvs, tag=0):
        pending = self._inner.exchange(sends, recvs, tag)
        log, wait = self, pending.wait

        class Logged:
            def wait(self):
                got = wait()
                log.steps[-1] += [("send", p, b.data_ptr()) for p, b in sends]
                log.steps[-1] += [("recv", p, b.data_ptr()) for p, b in got.items()]
                return got
        return Logged()


@pytest.mark.parametrize("make", [
    lambda ps, tr: gossip.Moniqua(ps, "ring", transport=tr, theta=1.0, bits=2, gamma=0.5,
                                  monitor=False),
    lambda ps, tr: gossip.DPSGD(ps, "ring", transport=tr),
    lambda ps, tr: gossip.Choco(ps, "ring", transport=tr, compressor="qsgd:4", gamma=0.5),
], ids=["moniqua", "dpsgd", "choco-qsgd4"])
def test_steps_reuse_their_payload_buffers(make):
    """Issue 9: the gossip layer sends from and receives into buffers kept across steps;
    after the first step no exchange touches new payload memory."""
    def fn(r, tr):
        log = _PointerLog(tr)
        p = param(start_values(3, seed=r)[0])
        g = make([p], log)
        for _ in range(4):
            log.steps.append([])
            g.step()
        return log.steps
    for steps in run_workers(3, fn):
        assert steps[0], "no payload was exchanged"
        assert all(s == steps[1] for s in steps[1:]), steps
        # the receive slots of different peers are different memory
        recv_ptrs = [ptr for kind, _, ptr in steps[1] if kind == "recv"]
        assert len(set(recv_ptrs)) == len(recv_ptrs)
