"""Structured DST: whole units, whole residual blocks and N:M groups whose mask
changes inside the compiled loop (lotto_jax.structured.dst_updater, ``lotto dst
--structure``).

Independent truths: numpy norms and top-k for the units GMP keeps (norms over the
kept entries only), numpy block sums, the closed-form GMP density, weight masks
built by hand from the kept units, a chi-square test of N:M SET's growth, and a
numpy re-evaluation of the stored network of a ``lotto dst`` run.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lotto_jax import _nm, masks, models, structured, train
from lotto_jax._topology import topology

MLP = models.build("mlp", features=(8, 6), num_classes=3)
PARAMS = models.init(MLP, jax.random.key(0), (5,))["params"]
TOPO = topology(MLP, PARAMS)


def _np(tree):
    return {masks.path_str(p): np.array(x)  # writable copies
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _top(scores, k):
    """Indices of the k highest scores; ties to the lower index (a stable sort)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _mlp_mask(keep0, keep1):
    """The weight mask of the MLP keeping units ``keep0`` of Dense_0 and ``keep1``
    of Dense_1, by hand: a unit's kernel column and bias, and its consumer's rows."""
    k0 = np.zeros(8, bool)
    k0[keep0] = True
    k1 = np.zeros(6, bool)
    k1[keep1] = True
    return {"Dense_0/kernel": np.broadcast_to(k0, (5, 8)), "Dense_0/bias": k0,
            "Dense_1/kernel": k0[:, None] & k1[None, :], "Dense_1/bias": k1,
            "output/kernel": np.broadcast_to(k1[:, None], (6, 3)),
            "output/bias": np.ones(3, bool)}


def _assert_mask(got, want):
    got = _np(got)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_unit_gmp_keeps_the_largest_norm_units_of_each_layer():
    """Four updates of unit GMP against numpy: the closed-form unit count, the L2
    norms of each unit's *kept* kernel entries, the top-k with ties to the first.
    Dense_0's unit 0 goes first; Dense_1's unit 5 is large only through the row
    that reads it, so it is kept at step 25 and removed at step 50."""
    p = _np(PARAMS)
    p["Dense_0/kernel"][:, 0] = 1e-3
    p["Dense_1/kernel"][:, 5] = 0.01
    p["Dense_1/kernel"][0, 5] = 100.0
    params = jax.tree.unflatten(jax.tree.structure(PARAMS),
                                [jnp.asarray(p[k]) for k in _np(PARAMS)])
    u = structured.dst_updater("neuron", "gmp", 0.25, topology=TOPO, end=100,
                               update_every=25, distribution="uniform")
    state = u.init(params, jax.random.key(0))
    mask = u.initial_mask(params, jax.random.key(0))
    _assert_mask(mask, _mlp_mask(range(8), range(6)))  # GMP starts dense
    history = []
    for step in (25, 50, 75, 100):
        d = 0.25 + 0.75 * (1 - step / 100) ** 3
        n0, n1 = math.floor(d * 8 + 0.5), math.floor(d * 6 + 0.5)
        m = _np(mask)
        norm0 = np.sqrt(((p["Dense_0/kernel"] * m["Dense_0/kernel"]) ** 2).sum(0))
        norm1 = np.sqrt(((p["Dense_1/kernel"] * m["Dense_1/kernel"]) ** 2).sum(0))
        kept0, kept1 = m["Dense_0/bias"], m["Dense_1/bias"]  # pruned units never return
        keep0 = np.flatnonzero(kept0)[_top(norm0[kept0], n0)]
        keep1 = np.flatnonzero(kept1)[_top(norm1[kept1], n1)]
        assert u.fires(step)
        mask, state = u.update(params, mask, None, step, state)
        _assert_mask(mask, _mlp_mask(keep0, keep1))
        history.append((0 in keep0, 5 in keep1, len(keep0), len(keep1)))
    assert history == [(False, True, 5, 3), (False, False, 3, 2), (False, False, 2, 2),
                       (False, False, 2, 2)]
    assert int(state.count) == 4


def test_unit_static_draws_whole_units_at_each_layers_density():
    u = structured.dst_updater("neuron", "static", 0.5, topology=TOPO,
                               distribution="uniform")
    seen = set()
    for seed in range(6):
        mask = u.initial_mask(PARAMS, jax.random.key(seed))
        m = _np(mask)
        keep0, keep1 = np.flatnonzero(m["Dense_0/bias"]), np.flatnonzero(m["Dense_1/bias"])
        assert (len(keep0), len(keep1)) == (4, 3)
        _assert_mask(mask, _mlp_mask(keep0, keep1))
        seen.add((tuple(keep0), tuple(keep1)))
        assert not u.fires(seed * 10 + 1)
    assert len(seen) > 1  # the key draws the units


def test_block_gmp_removes_the_blocks_of_lowest_summed_magnitude():
    model = models.build("resmlp", blocks=4, width=4, hidden=3, num_classes=3)
    params = models.init(model, jax.random.key(3), (5,))["params"]
    topo = structured.topology_for("layer", model, params)
    u = structured.dst_updater("layer", "gmp", 0.5, topology=topo, end=20, update_every=10)
    state = u.init(params, jax.random.key(0))
    mask = u.initial_mask(params, jax.random.key(0))
    p = _np(params)
    sums = np.array([sum(np.abs(v).sum() for k, v in p.items() if k.startswith(f"block_{i}/"))
                     for i in range(4)])
    mask, state = u.update(params, mask, None, 10, state)  # d = 0.5 + 0.5/8: 2.25 -> 2
    mask, state = u.update(params, mask, None, 20, state)
    keep = set(_top(sums, 2).tolist())
    for k, v in _np(mask).items():
        block = int(k[6]) if k.startswith("block_") else None
        want = block is None or block in keep
        assert v.all() if want else not v.any(), k
    with pytest.raises(ValueError, match="scope: does not apply"):
        structured.dst_updater("layer", "gmp", 0.5, topology=topo, end=20, scope="global")


def test_nm_set_keeps_n_per_group_and_grows_uniformly():
    """drop_fraction 1 with 1:4: every group drops its one weight and grows one of
    its four positions uniformly (chi-square over 400 draws, p > 0.001)."""
    u = _nm.nm_set(1, 4, end=100, update_every=10, drop_fraction=1.0)
    params = {"w": jnp.arange(1.0, 9.0).reshape(8, 1)}  # groups rows 0-3 and 4-7
    mask = {"w": jnp.array([[True], [False], [False], [False]] * 2)}
    counts = np.zeros(8)
    update = jax.jit(lambda key: u.update(params, mask, None, 10, u.init(params, key))[0])
    for seed in range(400):
        new = update(jax.random.key(seed))
        assert _nm.is_nm(new, n=1, m=4) and int(new["w"].sum()) == 2
        counts += np.asarray(new["w"][:, 0])
    for g in (counts[:4], counts[4:]):
        chi2 = ((g - 100) ** 2 / 100).sum()
        assert chi2 < 16.27, g  # 3 degrees of freedom, p = 0.001


def test_structured_dst_refusals_name_the_argument():
    with pytest.raises(ValueError, match=r"method: .*'rigl'.*grown unit"):
        structured.dst_updater("neuron", "rigl", 0.5, topology=TOPO, end=10)
    with pytest.raises(ValueError, match=r"method: 'gmp' changes the density.*2/4"):
        structured.dst_updater("2:4", "gmp", end=10)
    with pytest.raises(ValueError, match=r"density: the 2:4 mask keeps 2/4 = 0.5"):
        structured.dst_updater("2:4", "static", 0.3)
    with pytest.raises(ValueError, match="topology: structure 'neuron' needs"):
        structured.dst_updater("neuron", "gmp", 0.5, end=10)
    with pytest.raises(ValueError, match="method: expected one of"):
        structured.dst_updater("weight", "prune", 0.5)
    u = structured.dst_updater("neuron", "gmp", 0.01, topology=TOPO, end=10,
                               distribution="uniform")
    with pytest.raises(ValueError, match=r"\(8 units\) would keep no unit"):
        u.init(PARAMS, jax.random.key(0))


def _toy(n=200, dim=5, seed=0):
    from lotto_jax import data

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, 3))

    def split(k):
        x = rng.normal(size=(k, dim)).astype(np.float32)
        return data.Split(x, np.argmax(x @ w, 1).astype(np.int32))

    return data.Dataset(name="toy", train=split(n), validation=None, test=split(50),
                        input_shape=(dim,), num_classes=3,
                        normalization={"mean": [0.0], "std": [1.0]})


def test_unit_gmp_in_the_loop_zeroes_removed_units_and_follows_the_schedule():
    ds = _toy()
    u = structured.dst_updater("neuron", "gmp", 0.25, topology=TOPO, end=40,
                               update_every=10, distribution="uniform")
    cfg = train.TrainConfig(steps=50, batch_size=20, eval_every=10, lr=0.01)
    tr = train.make_trainer(train.classifier(MLP), cfg, num_train=200, updater=u)
    seen = []
    state, _ = train.fit(tr, tr.init(PARAMS, key=jax.random.key(1)), None, ds,
                         data_key=jax.random.key(2),
                         callback=lambda st, rec: seen.append(jax.tree.map(np.asarray, st)))
    for st in seen:
        s = int(st.step)
        d = 0.25 + 0.75 * (1 - min(s // 10 * 10, 40) / 40) ** 3 if s >= 10 else 1.0
        m = _np(st.dst.mask)
        assert m["Dense_0/bias"].sum() == math.floor(d * 8 + 0.5), s
        assert m["Dense_1/bias"].sum() == math.floor(d * 6 + 0.5), s
        _assert_mask(st.dst.mask, _mlp_mask(np.flatnonzero(m["Dense_0/bias"]),
                                            np.flatnonzero(m["Dense_1/bias"])))
        for k, v in _np(st.params).items():
            assert (v[~m[k]] == 0).all(), (s, k)  # removed units output exactly 0
    assert int(state.dst.inner.count) == 4


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    r = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("dst_structured") / "tiny.npz"
    np.savez(path, x_train=r.normal(size=(256, 40)).astype(np.float32),
             y_train=r.integers(0, 10, 256), x_test=r.normal(size=(64, 40)).astype(np.float32),
             y_test=r.integers(0, 10, 64))
    return path


@pytest.mark.parametrize("structure,method", [("neuron", "gmp"), ("2:4", "rigl")])
def test_lotto_dst_structure_end_to_end(npz, tmp_path, structure, method):
    """``lotto dst --structure`` in this process: the stored mask is whole units
    (N:M), the stored weights are 0 off it, and a numpy forward pass of the stored
    network reproduces the recorded final test accuracy."""
    import orbax.checkpoint as ocp

    from lotto_jax.runs import cli

    out = tmp_path / "run"
    args = ["dst", "--model", "mlp", "--dataset", f"npz:{npz}", "--steps", "40",
            "--batch-size", "32", "--eval-every", "20", "--update-every", "10",
            "--structure", structure, "--method", method, "--out", str(out)]
    if structure == "neuron":
        args += ["--density", "0.5", "--distribution", "uniform"]
    assert cli.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["structure"] == structure
    final = ocp.StandardCheckpointer().restore((out / "dst" / "final").resolve())
    p, m = _np(final["params"]), _np(final["mask"])
    for k in p:
        assert (p[k][~m[k]] == 0).all(), k
    if structure == "neuron":
        assert res["target_density"] == 0.5
        for k in ("Dense_0", "Dense_1"):
            cols = m[f"{k}/kernel"].any(0)
            assert cols.sum() == round(0.5 * cols.size)
            np.testing.assert_array_equal(m[f"{k}/bias"], cols)
    else:
        assert res["target_density"] == 0.5
        for k in ("Dense_0", "Dense_1", "output"):
            g = m[f"{k}/kernel"].reshape(-1, 4, m[f"{k}/kernel"].shape[1])
            assert (g.sum(1) == 2).all(), k
    d = np.load(npz)
    h = d["x_test"]
    for k in ("Dense_0", "Dense_1"):
        h = np.maximum(h @ p[f"{k}/kernel"] + p[f"{k}/bias"], 0)
    acc = np.mean(np.argmax(h @ p["output/kernel"] + p["output/bias"], 1) == d["y_test"])
    assert acc == pytest.approx(res["final_test_accuracy"], abs=1e-6)
