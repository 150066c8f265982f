"""Tests for lotto_jax.runs.store: round trips, plain-orbax compatibility, the config
check, the commit protocol and corruption detection.

Corruptions are made by hand on the files orbax wrote (garbage bytes of the same size,
truncation, deletion, an extra file, a missing manifest); every one must raise
CorruptCheckpointError naming the path, never return data.
"""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lotto_jax.runs.store import (
    ConfigMismatchError,
    CorruptCheckpointError,
    RunStore,
    config_diff,
    round_name,
    write_json_atomic,
)

CONFIG = {"run": {"seed": 0, "train": {"lr": 0.001, "steps": 30}}, "rounds": 2,
          "controls": []}


def tree():
    return {
        "params": {"Dense_0": {"kernel": jnp.arange(12.0).reshape(3, 4),
                               "bias": jnp.array([1.0, -2.0, 3.0, 0.5])}},
        "model_state": {},
    }


def assert_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert np.asarray(x).dtype == np.asarray(y).dtype


def data_files(path):
    """The files holding array bytes (orbax/OCDBT data chunks)."""
    files = [f for f in glob.glob(os.path.join(path, "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    assert files, f"no data files under {path}"
    return files


def test_round_trip_and_plain_orbax_restore(tmp_path):
    store = RunStore.open(str(tmp_path / "run"), CONFIG)
    t = tree()
    mask = {"w": jnp.array([[True, False], [False, True]])}
    store.save("round_001/final", t)
    store.save(f"{round_name(1)}/mask", mask)
    assert store.has("round_001/final") and not store.has("round_002/final")
    # Through the store, against an abstract target.
    assert_equal(store.restore("round_001/final", jax.eval_shape(lambda: t)), t)
    assert_equal(store.restore("round_001/mask"), mask)
    # Plain orbax, no lotto_jax: the two lines of the module docstring.
    restored = ocp.StandardCheckpointer().restore(
        str(tmp_path / "run" / "round_001" / "final"), jax.eval_shape(lambda: t))
    assert_equal(restored, t)
    plain_mask = ocp.StandardCheckpointer().restore(str(tmp_path / "run/round_001/mask"))
    assert_equal(plain_mask, mask)
    store.verify("round_001/final")  # reading changed no file
    # config.json holds the config as written.
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f) == CONFIG


def test_changed_config_is_refused_listing_fields(tmp_path):
    d = str(tmp_path / "run")
    RunStore.open(d, CONFIG)
    changed = {**CONFIG, "run": {"seed": 3, "train": {"lr": 0.002, "steps": 30}}}
    with pytest.raises(ConfigMismatchError) as e:
        RunStore.open(d, changed)
    msg = str(e.value)
    assert "run.train.lr: 0.001 -> 0.002" in msg
    assert "run.seed: 0 -> 3" in msg
    assert "steps" not in msg and d in msg and "overwrite" in msg
    # A new field and a removed one are named too.
    with pytest.raises(ConfigMismatchError, match=r"extra: <absent> -> 1"):
        RunStore.open(d, {**CONFIG, "extra": 1})
    # Mutable fields may change; the stored value follows.
    RunStore.open(d, {**CONFIG, "rounds": 5}, mutable=("rounds",))
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["rounds"] == 5


def test_new_dir_and_overwrite(tmp_path):
    d = str(tmp_path / "run")
    RunStore.open(d, CONFIG).save("init", tree())
    changed = {**CONFIG, "rounds": 7}
    s1 = RunStore.open(d, changed, new_dir=True)
    assert s1.directory == d + "_1"
    # The same changed config again finds its directory; the original is kept.
    assert RunStore.open(d, changed, new_dir=True).directory == d + "_1"
    assert RunStore.open(d, CONFIG).has("init")
    s = RunStore.open(d, changed, overwrite=True)
    assert s.directory == d and not s.has("init")
    # overwrite never deletes a directory that is not a run.
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not a run directory"):
        RunStore.open(str(other), CONFIG, overwrite=True)
    assert (other / "thesis.tex").exists()


def test_config_diff_nested_and_ignore():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    new = {"a": {"b": 2, "c": (1, 2)}, "d": "y"}
    assert config_diff(old, new) == ['a.b: 1 -> 2', 'd: "x" -> "y"']
    assert config_diff(old, new, ignore=("a",)) == ['d: "x" -> "y"']


def test_a_field_added_at_its_default_does_not_refuse_an_older_run(tmp_path):
    """A config written before ``structure`` existed resumes under the new class
    when the new field is at its default, and is refused when it is not."""
    old = {"run": {"lr": 0.1}, "method": "rigl"}
    defaults = {"run": {"lr": 0.5, "seed": 0}, "method": "rigl", "structure": "weight"}
    same = {"run": {"lr": 0.1, "seed": 0}, "method": "rigl", "structure": "weight"}
    assert config_diff(old, same, defaults=defaults) == []
    assert config_diff(old, {**same, "structure": "neuron"}, defaults=defaults) == [
        'structure: <absent> -> "neuron"']
    assert config_diff(old, {**same, "run": {"lr": 0.2, "seed": 0}}, defaults=defaults) == [
        "run.lr: 0.1 -> 0.2"]
    RunStore.open(str(tmp_path / "run"), old).close()
    RunStore.open(str(tmp_path / "run"), same, defaults=defaults).close()  # resumes
    with pytest.raises(ConfigMismatchError, match="structure"):
        RunStore.open(str(tmp_path / "run"), {**same, "structure": "2:4"}, defaults=defaults)


@pytest.mark.parametrize("damage", ["garble", "truncate", "delete", "extra", "manifest"])
def test_corrupt_checkpoint_is_detected(tmp_path, damage):
    store = RunStore.open(str(tmp_path / "run"), CONFIG)
    store.save("round_000/final", tree())
    path = store.path("round_000/final")
    victim = data_files(path)[0]
    if damage == "garble":
        size = os.path.getsize(victim)
        with open(victim, "wb") as f:
            f.write(bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8)))
        where = victim
    elif damage == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(os.path.getsize(victim) // 2)
        where = victim
    elif damage == "delete":
        os.remove(victim)
        where = victim
    elif damage == "extra":
        where = os.path.join(path, "d", "stray")
        with open(where, "w") as f:
            f.write("stray")
    else:  # a killed save: orbax finished, the manifest was never written
        os.remove(path + ".manifest.json")
        where = path
        assert not store.has("round_000/final")
    with pytest.raises(CorruptCheckpointError) as e:
        store.restore("round_000/final", jax.eval_shape(tree))
    assert where in str(e.value)


def test_garbled_manifest_and_record(tmp_path):
    store = RunStore.open(str(tmp_path / "run"), CONFIG)
    store.save("init", tree())
    with open(store.path("init") + ".manifest.json", "w") as f:
        f.write('{"format": "lotto_jax.st')
    with pytest.raises(CorruptCheckpointError, match=r"init\.manifest\.json: not valid JSON"):
        store.restore("init")
    with open(store.path("config.json"), "w") as f:
        f.write("{garbage")
    with pytest.raises(CorruptCheckpointError, match=r"config\.json: not valid JSON"):
        RunStore.open(store.directory, CONFIG)


def test_debris_of_a_killed_save_is_ignored_and_replaced(tmp_path):
    store = RunStore.open(str(tmp_path / "run"), CONFIG)
    # What a kill leaves: an orbax temp dir and a finalised dir without manifest.
    os.makedirs(store.path("round_000", "final.orbax-checkpoint-tmp-123", "d"))
    os.makedirs(store.path("round_000", "final", "d"))
    with open(store.path("round_000", "final", "d", "junk"), "w") as f:
        f.write("junk")
    assert not store.has("round_000/final")
    store.save("round_000/final", tree())
    assert_equal(store.restore("round_000/final"), tree())
    assert sorted(os.listdir(store.path("round_000"))) == ["final", "final.manifest.json"]


def test_step_series_keeps_latest_with_meta(tmp_path):
    store = RunStore.open(str(tmp_path / "run"), CONFIG)
    assert store.latest_step("round_001") is None
    for step in (10, 20, 30):
        t = jax.tree.map(lambda x, s=step: x + s, tree())
        store.save_step("round_001", step, t, meta={"curve": [{"step": step}]})
    ckpts = sorted(os.listdir(store.path("round_001", "checkpoints")))
    assert ckpts == ["step_00000030", "step_00000030.manifest.json"]
    # A partial newer save (no manifest) is not picked.
    os.makedirs(store.path("round_001", "checkpoints", "step_00000040"))
    restored, meta = store.latest_step("round_001", jax.eval_shape(tree))
    assert_equal(restored, jax.tree.map(lambda x: x + 30, tree()))
    assert meta == {"step": 30, "curve": [{"step": 30}]}
    store.clear_steps("round_001")
    assert not os.path.exists(store.path("round_001", "checkpoints"))


def test_write_json_atomic_leaves_no_temp(tmp_path):
    path = str(tmp_path / "m.json")
    write_json_atomic(path, {"a": np.float32(0.5), "b": (1, 2), "c": np.arange(2)})
    with open(path) as f:
        assert json.load(f) == {"a": 0.5, "b": [1, 2], "c": [0, 1]}
    assert os.listdir(tmp_path) == ["m.json"]
