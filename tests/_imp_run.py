"""A tiny IMP run shared by tests/test_imp.py and tests/test_replicates.py.

As a script: ``python tests/_imp_run.py --mesh-check DATA.npz OUT.npz`` (run with 8
host devices) runs IMP on a ``data=8`` mesh (:func:`mesh_check`) on the dataset
saved by :func:`save_dataset` and saves what the test compares with one device. (Kill-and-resume runs a real ``lotto imp``
process: tests/test_resume_imp.py.)
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from lotto_jax import data, models, train
from lotto_jax.runs import imp as imp_run

STEPS, EVAL_EVERY = 30, 10
FRACTION, OUTPUT_FRACTION = 0.2, 0.1


def setup(dataset: data.Dataset | None = None):
    """``(dataset, module, params0, trainer, init_fn)`` of the tiny problem.

    Validation and test have the same size (1000): one compiled evaluation.
    """
    dataset = dataset or data.load("mnist1d", validation=1000)
    module = models.build("mlp", features=(32,))
    params0 = models.init(module, jax.random.key(0), dataset.input_shape)["params"]
    config = train.TrainConfig(
        steps=STEPS, eval_every=EVAL_EVERY, batch_size=32, optimizer="adam", lr=1e-2,
        schedule="cosine",
    )
    trainer = train.make_trainer(
        train.classifier(module), config, num_train=dataset.train.x.shape[0]
    )

    def init_fn(key):
        return models.init(module, key, dataset.input_shape)["params"], {}

    return dataset, module, params0, trainer, init_fn


def run(trainer, params0, dataset, init_fn, *, store, rounds=2, controls=("shuffle",),
        rewind="init", save_every=20, data_key=None, key=None, **kw):
    """The tiny IMP run; ``data_key`` and ``key`` default to key(1) and key(2)."""
    return imp_run.run_imp(
        trainer, params0, {}, dataset, rounds=rounds, fraction=FRACTION,
        scope="layerwise", layer_fractions={"^output/": OUTPUT_FRACTION},
        rewind=rewind, controls=controls,
        data_key=jax.random.key(1) if data_key is None else data_key,
        key=jax.random.key(2) if key is None else key, store=store, init_fn=init_fn,
        save_every=save_every, progress=False, **kw,
    )


def replicated(module, dataset, n: int):
    """``(params0, data_key, key)`` of ``n`` replicates stacked; replicate 0 is the
    single run's (init key(0), data key(1), control key(2))."""
    params = [models.init(module, jax.random.key(i), dataset.input_shape)["params"]
              for i in range(n)]
    stack = lambda *xs: jax.numpy.stack(xs)  # noqa: E731
    return (jax.tree.map(stack, *params),
            stack(*[jax.random.key(1 + 10 * i) for i in range(n)]),
            stack(*[jax.random.key(2 + 10 * i) for i in range(n)]))


MESH_CONTROLS = ("shuffle", "random")


def mesh_check(data_path: str, out_path: str) -> None:
    """IMP (2 rounds, shuffle and random controls) data-parallel over 8 devices
    (``XLA_FLAGS=--xla_force_host_platform_device_count=8``): the params sharded
    over the 8, one compile of each train chunk on the mesh; its masks and final
    params saved in ``out_path`` (:func:`mesh_arrays` names them) for the test to
    compare with the one-device run of the same problem."""
    from lotto_jax import sharding

    assert len(jax.devices()) == 8, jax.devices()
    dataset = load_dataset(data_path)
    _, module, params0, trainer, init_fn = setup(dataset)
    mesh = sharding.make_mesh("data=8")
    mesh_trainer = train.make_trainer(train.classifier(module), trainer.config,
                                      num_train=dataset.train.x.shape[0], mesh=mesh)
    many = run(mesh_trainer, params0, dataset, init_fn, store=None,
               controls=MESH_CONTROLS, mesh=mesh)
    kernel = many.params["Dense_0"]["kernel"]
    assert len(kernel.sharding.device_set) == 8, kernel.sharding
    sizes = (mesh_trainer._train_chunk._cache_size(),
             mesh_trainer._train_chunk_vmapped._cache_size())
    assert sizes == (1, 1), sizes  # the trunk alone; the two controls stacked
    np.savez(out_path, **mesh_arrays(many))
    print("MESH OK", flush=True)


def mesh_arrays(result) -> dict[str, np.ndarray]:
    """The masks of every round and control and the final params of an IMP result,
    as numpy arrays named by where they come from."""
    trees = {f"round{r}": x.mask for r, x in enumerate(result.rounds)}
    trees |= {f"{c}{r}": x.mask for c in MESH_CONTROLS
              for r, x in enumerate(result.controls[c])}
    trees["params"] = result.params
    return {f"{name}/{jax.tree_util.keystr(path)}": np.asarray(leaf)
            for name, tree in trees.items()
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def track_labels(set_attr=setattr) -> dict:
    """Makes ``Engine._fit`` keep the label of the stack it trains in the returned
    dict's ``"now"`` (``"round 1/2 (80.0%)"``, ``"reinit+random 1/2 (...)"``).

    ``train.fit`` takes no label (it draws nothing), so spies on it read this one.
    ``set_attr``: ``setattr``, or a ``MonkeyPatch.setattr`` to undo it afterwards.
    """
    from lotto_jax.runs.engine import Engine

    real, labels = Engine._fit, {"now": None}

    def labelled(engine, units, points, description, *rest):
        labels["now"] = description
        return real(engine, units, points, description, *rest)

    set_attr(Engine, "_fit", labelled)
    return labels


def save_dataset(dataset: data.Dataset, path: str) -> None:
    np.savez(path, **{f"{split}_{k}": getattr(getattr(dataset, split), k)
                      for split in ("train", "validation", "test") for k in "xy"})


def load_dataset(path: str) -> data.Dataset:
    with np.load(path) as f:
        split = {s: data.Split(f[f"{s}_x"], f[f"{s}_y"])
                 for s in ("train", "validation", "test")}
    return data.Dataset(name="mnist1d", input_shape=(40,), num_classes=10,
                        normalization={"mean": [0.0], "std": [1.0]}, **split)


if __name__ == "__main__":
    assert sys.argv[1] == "--mesh-check", sys.argv
    mesh_check(sys.argv[2], sys.argv[3])
