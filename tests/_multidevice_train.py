"""Run by tests/test_sharding.py in a subprocess with 8 host devices.

Trains the same masked network on one device, data-parallel over 8 and FSDP-style
over data=4 x model=2, and checks params, masks, shardings and the trace count.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from lotto_jax import data, masks, models, prune, scores, sharding, train

assert len(jax.devices()) == 8, jax.devices()
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
    st, res = train.fit(tr, st, mk, ds, data_key=jax.random.key(1), progress=False)
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
print("MULTIDEVICE OK")
