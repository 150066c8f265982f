"""Run by tests/test_sharding.py in a subprocess with 8 host devices.

First checks sharding.param_shardings on meshes data=4 x model=2 and data=2 x
model=4 against hand-written specs and shard shapes (a leaf whose largest axis
divides the model axis, ones that fall back to another axis, indivisible and small
leaves replicated) and that masks.init keeps each param's sharding. Then trains the
same masked network on one device, data-parallel over 8 and FSDP-style over
data=4 x model=2, and checks params, masks, shardings and the trace count.
"""

import os

# The LLVM backend at -O0 without its expensive passes: this script is nearly all
# compilation (five trainers on three meshes), which these flags cut by about a third;
# every property checked here (specs, shard shapes, trace counts, equality with one
# device under the same flags) is the compiler's HLO-level output, not LLVM's.
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0"
                           " --xla_llvm_disable_expensive_passes=true")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from lotto_jax import data, masks, models, prune, scores, sharding, train

assert len(jax.devices()) == 8, jax.devices()

# ------------------------------------------------------------------ param_shardings
# Expected specs and per-device shard shapes are written out by hand from the rule
# of sharding.param_shardings: with fsdp, a leaf of >= 1024 elements is split over
# "model" along its largest dimension divisible by the axis size (ties: the first
# such dimension), falling back to the next largest; none divisible, or < 1024
# elements: replicated.
M = "model"
leaves = {  # shape, {model size: (spec, shard shape)}
    "divisible": ((300, 40), {2: (P(M, None), (150, 40)), 4: (P(M, None), (75, 40))}),
    # 301 is odd: falls back to the 64-wide axis
    "fallback": ((301, 64), {2: (P(None, M), (301, 32)), 4: (P(None, M), (301, 16))}),
    # a conv kernel: 66 divides 2 but not 4, where the 16 input channels take over
    "conv": ((3, 3, 16, 66), {2: (P(None, None, None, M), (3, 3, 16, 33)),
                              4: (P(None, None, M, None), (3, 3, 4, 66))}),
    "indivisible": ((301, 33), {2: (P(), (301, 33)), 4: (P(), (301, 33))}),
    "at_min_size": ((32, 32), {2: (P(M, None), (16, 32)), 4: (P(M, None), (8, 32))}),
    "below_min_size": ((31, 32), {2: (P(), (31, 32)), 4: (P(), (31, 32))}),
    "bias": ((100,), {2: (P(), (100,)), 4: (P(), (100,))}),
}
tree = {k: np.arange(np.prod(s), dtype=np.float32).reshape(s) for k, (s, _) in leaves.items()}
for spec_str, n_model in [("data=4,model=2", 2), ("data=2,model=4", 4)]:
    mesh = sharding.make_mesh(spec_str)
    assert dict(mesh.shape) == {"data": 8 // n_model, "model": n_model}, mesh.shape
    # without fsdp everything is replicated
    for s in jax.tree.leaves(sharding.param_shardings(tree, mesh)):
        assert s.spec == P(), s.spec
    shardings = sharding.param_shardings(tree, mesh, fsdp=True)
    placed = sharding.place(tree, shardings)
    mask = masks.init(placed, prunable=masks.all_leaves)
    for name, (shape, want) in leaves.items():
        spec, shard_shape = want[n_model]
        assert shardings[name].spec == spec, (spec_str, name, shardings[name].spec, spec)
        p, m = placed[name], mask[name]
        assert p.sharding.spec == spec, (spec_str, name, p.sharding.spec)
        # masks.init keeps the param's sharding: same spec, same shard per device
        assert m.sharding.spec == spec, (spec_str, name, m.sharding.spec)
        assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
        assert m.dtype == np.bool_ and m.shape == shape
        p_shards = {s.device: s for s in p.addressable_shards}
        for s in m.addressable_shards:
            assert s.data.shape == shard_shape, (spec_str, name, s.data.shape, shard_shape)
            assert s.index == p_shards[s.device].index, (name, s.index)
            assert bool(np.all(np.asarray(s.data)))
            # the param's shard holds the slice its index names
            np.testing.assert_array_equal(np.asarray(p_shards[s.device].data),
                                          tree[name][s.index])
print("PARAM SHARDINGS OK", flush=True)
rng = np.random.default_rng(0)
x = rng.normal(size=(512, 16)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int32)
split = data.Split(x, y)
ds = data.Dataset("toy", split, split, split, (16,), 2, {"mean": [0.0], "std": [1.0]})
traces = []


class Counting(models.MLP):
    def __call__(self, x, *, train=False):
        traces.append(1)
        return super().__call__(x, train=train)


module = Counting(features=(2048,), num_classes=2)
p0 = models.init(module, jax.random.key(0), (16,))["params"]
traces.clear()
mask = prune.to_density(scores.magnitude(p0), masks.init(p0), 0.3)
cfg = train.TrainConfig(steps=40, batch_size=64, eval_every=10, lr=1e-2)
results = {}
for spec, fsdp in [(None, False), ("data=8", False), ("data=4,model=2", True)]:
    if spec is None:
        tr = train.make_trainer(train.classifier(module), cfg, num_train=512)
        st, mk = tr.init(p0), mask
    else:
        mesh = sharding.make_mesh(spec)
        tr = train.make_trainer(
            train.classifier(module), cfg, num_train=512, mesh=mesh, fsdp=fsdp
        )
        st = sharding.place_state(tr.init(p0), mesh, fsdp=fsdp, tx=tr.tx)
        # masks.init on placed params follows their sharding
        placed_mask = masks.init(st.params)
        for p, m in zip(jax.tree.leaves(st.params), jax.tree.leaves(placed_mask), strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
        mk = sharding.place(mask, sharding.param_shardings(p0, mesh, fsdp=fsdp))
    n0 = len(traces)
    st, res = train.fit(tr, st, mk, ds, data_key=jax.random.key(1))
    # one trace of the train chunk and one of evaluate for the whole fit
    assert len(traces) - n0 == 2, len(traces) - n0
    results[spec] = st
    if spec is not None:
        kernel = st.params["Dense_0"]["kernel"]
        want = P(None, "model") if fsdp else P()
        assert kernel.sharding.spec == want, kernel.sharding.spec
        for p, m in zip(jax.tree.leaves(st.params), jax.tree.leaves(mk), strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (m.sharding, p.sharding)
        moments = jax.tree.leaves(st.opt_state)
        assert any(getattr(m.sharding, "spec", None) == want for m in moments)

for st in results.values():
    for a, b in zip(jax.tree.leaves(results[None].params), jax.tree.leaves(st.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for p, m in zip(jax.tree.leaves(st.params), jax.tree.leaves(mask), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)

# ------------------------------------------------------------- DST on a mesh
# RigL whose mask changes inside the loop: the mask in state.dst keeps its params'
# sharding on every mesh, one trace per fit, and the run matches the single device
# (the same counts; the same masks up to a rare rank flip between near-equal
# magnitudes summed in another order).
from lotto_jax import dst  # noqa: E402

u = dst.rigl(0.2, end=30, update_every=10, distribution="uniform")
dst_results = {}
for spec, fsdp in [(None, False), ("data=4,model=2", True)]:  # FSDP: the harder layout
    mesh = None if spec is None else sharding.make_mesh(spec)
    tr = train.make_trainer(train.classifier(module), cfg, num_train=512, mesh=mesh,
                            fsdp=fsdp, updater=u)
    st = tr.init(p0, key=jax.random.key(3))
    if mesh is not None:
        st = sharding.place_state(st, mesh, fsdp=fsdp, tx=tr.tx)
    n0 = len(traces)
    st, res = train.fit(tr, st, None, ds, data_key=jax.random.key(1))
    # one compile for the whole fit: the step, the update's gradient, evaluate
    assert len(traces) - n0 == 3, len(traces) - n0
    assert int(st.dst.inner.count) == 3
    if mesh is not None:
        for p, m in zip(jax.tree.leaves(st.params), jax.tree.leaves(st.dst.mask), strict=True):
            assert m.sharding.is_equivalent_to(p.sharding, p.ndim), (spec, m.sharding, p.sharding)
    dst_results[spec] = st
ref = dst_results[None]
for spec, st in dst_results.items():
    for a, b in zip(jax.tree.leaves(ref.dst.mask), jax.tree.leaves(st.dst.mask), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.sum() == b.sum(), spec
        assert (a != b).sum() <= 0.001 * a.size, (spec, (a != b).sum())
    for p, m in zip(jax.tree.leaves(st.params), jax.tree.leaves(st.dst.mask), strict=True):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)
print("MULTIDEVICE OK")
