"""Hand-written run directories of every kind, for the readers' tests (report, ls,
sweeps, repair).

Each run is laid out as its driver lays it out (:mod:`lotto_jax.runs.layout`),
through :class:`~lotto_jax.runs.store.RunStore` (real orbax items with manifests),
with tiny arrays and metrics chosen by hand: the tests compare what the readers
print with these numbers, worked out by hand (means and population stds of two
replicates), never with the readers' own helpers.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from lotto_jax.runs.store import RunStore

STEPS = 20


def run_config(replicates=1, model="mlp"):
    return {"model": model, "dataset": "npz:tiny.npz", "seed": 0, "data_seed": 0,
            "replicates": replicates, "train": {"steps": STEPS, "eval_every": 10}}


def curve(*points):
    """Evaluation records at steps 0, 10, 20, ... with these test accuracies."""
    return [{"step": 10 * i, "train_loss": None, "val_loss": None, "val_accuracy": None,
             "test_loss": None, "test_accuracy": acc, "lr": 0.1}
            for i, acc in enumerate(points)]


def fit_metrics(points, *, es_step=None, es_acc=None):
    """A unit's ``metrics.json`` as the engine writes it: final = the last point,
    best = the maximum over the curve (per replicate)."""
    a = np.asarray(points, float)
    final, best = a[-1].tolist(), a.max(axis=0).tolist()
    return {"final_test_accuracy": final, "best_test_accuracy": best,
            "early_stop_step": es_step, "early_stop_test_accuracy": es_acc,
            "curve": curve(*points)}


def _tree(seed=0):
    return {"w": np.arange(6.0).reshape(2, 3) + seed, "b": np.zeros(3, np.float32)}


def build(directory, config, *, units, top=(), export=(), results=None, extra=None):
    """Writes a run. ``units``: prefix -> {items, metrics, curve, stack, step}:
    the unit's items (``final`` carries the curve and stack in its manifest), a
    mid-run checkpoint at ``step`` (with the curve so far), its ``metrics.json``."""
    with RunStore.open(str(directory), config) as store:
        for item in top:
            store.save(item, _tree())
        for prefix, u in units.items():
            meta = {"curve": u.get("curve", []), "stack": u.get("stack", [prefix])}
            for name in u.get("items", ()):
                store.save(f"{prefix}/{name}", _tree(1), meta=meta if name == "final" else None)
            if u.get("step"):
                store.save_step(prefix, u["step"], _tree(2), meta=meta)
            if u.get("metrics") is not None:
                store.write_json(f"{prefix}/metrics.json", u["metrics"])
        for item in export:
            store.save(item, _tree(3))
        for name, record in (extra or {}).items():
            store.write_json(name, record)
        if results is not None:
            store.write_json("results.json", results)
    return str(directory)


# --------------------------------------------------------------------- PaI
PAI_CONFIG = {"run": run_config(2), "method": "snip", "density": 0.1, "scope": "global",
              "controls": ["shuffle", "reinit"]}
# test accuracy per evaluation, two replicates
SNIP = [[0.10, 0.20], [0.50, 0.95], [0.80, 0.90]]
SHUFFLE = [[0.10, 0.10], [0.30, 0.40], [0.40, 0.60]]
REINIT = [[0.10, 0.10], [0.60, 0.60], [0.70, 0.80]]


def _pai_entry(points, collapsed, control, **es):
    return {"control": control, "density": 0.1, "collapsed_layers": collapsed,
            "layer_densities": {"Dense_0/kernel": [0.1, 0.1]}, **fit_metrics(points, **es)}


def pai_done(directory):
    """snip trained alone; shuffle and reinit in one stack (after a resume)."""
    es = {"es_step": [10, 20], "es_acc": [0.50, 0.90]}
    units = {
        "variants/snip": {"items": ("mask", "final"), "curve": curve(*SNIP),
                          "metrics": fit_metrics(SNIP, **es)},
        "variants/shuffle": {"items": ("mask", "final"), "curve": curve(*SHUFFLE),
                             "stack": ["variants/shuffle", "variants/reinit"],
                             "metrics": fit_metrics(SHUFFLE)},
        "variants/reinit": {"items": ("mask", "init", "final"), "curve": curve(*REINIT),
                            "stack": ["variants/shuffle", "variants/reinit"],
                            "metrics": fit_metrics(REINIT)},
    }
    results = {"method": "snip", "density": 0.1, "scope": "global", "replicates": 2,
               "variants": {"snip": _pai_entry(SNIP, [], None, **es),
                            "shuffle": _pai_entry(SHUFFLE, ["Dense_1/kernel"], "shuffle"),
                            "reinit": _pai_entry(REINIT, [], "reinit")}}
    return build(directory, PAI_CONFIG, units=units, top=("init",), results=results)


def pai_unfinished(directory):
    """snip finished; shuffle and reinit stacked, killed after their step-10
    checkpoint."""
    stack = ["variants/shuffle", "variants/reinit"]
    units = {
        "variants/snip": {"items": ("mask", "final"), "curve": curve(*SNIP),
                          "metrics": fit_metrics(SNIP)},
        "variants/shuffle": {"items": ("mask",), "curve": curve(*SHUFFLE[:2]), "step": 10,
                             "stack": stack},
        "variants/reinit": {"items": ("mask", "init"), "curve": curve(*REINIT[:2]),
                            "step": 10, "stack": stack},
    }
    return build(directory, PAI_CONFIG, units=units, top=("init",))


# --------------------------------------------------------------- supermask
SUPERMASK_CONFIG = {"run": run_config(1), "method": "edge-popup", "keep": 0.5,
                    "weight_init": "signed-constant", "pretrained": None}
SEARCH = [0.10, 0.62, 0.60]


def supermask_done(directory):
    units = {"search": {"items": ("init", "final"), "curve": curve(*SEARCH),
                        "metrics": fit_metrics(SEARCH)}}
    results = {"method": "edge-popup", "keep": 0.5, "weight_init": "signed-constant",
               "density": 0.5, "final_test_accuracy": 0.60, "best_test_accuracy": 0.62,
               "early_stop_step": None, "early_stop_test_accuracy": None,
               "exported_test_accuracy": 0.58,
               "baselines": {"all_ones": 0.10, "shuffled": 0.20}, "replicates": 1}
    return build(directory, SUPERMASK_CONFIG, units=units,
                 export=("export/mask", "export/scores", "export/weights"), results=results)


# ------------------------------------------------------------------- train
TRAIN_CONFIG = {"run": run_config(1, model="lenet"), "mask": None}
TRAIN = [0.10, 0.92, 0.90]


def train_done(directory):
    units = {"train": {"items": ("final",), "curve": curve(*TRAIN),
                       "metrics": fit_metrics(TRAIN, es_step=10, es_acc=0.92)}}
    results = {"model": "lenet", "dataset": "npz:tiny.npz", "steps": STEPS,
               "replicates": 1, "density": 1.0, "final_test_accuracy": 0.90,
               "best_test_accuracy": 0.92, "early_stop_step": 10,
               "early_stop_test_accuracy": 0.92}
    return build(directory, TRAIN_CONFIG, units=units, top=("init", "mask"),
                 results=results)


# --------------------------------------------------------------------- IMP
IMP_CONFIG = {"run": run_config(1), "rounds": 1, "rewind": "init", "fraction": 0.2,
              "controls": ["random", "reinit"]}


def _round(density, points):
    return {"density": density, **fit_metrics(points)}


def imp_done(directory):
    """Rounds 0-1; round 1's controls trained in one stack."""
    stack = ["controls/random/round_001", "controls/reinit/round_001"]
    units = {
        "round_000": {"items": ("mask", "final"), "metrics": _round(1.0, [0.1, 0.90])},
        "round_001": {"items": ("mask", "final"), "metrics": _round(0.8, [0.1, 0.88])},
        "controls/random/round_001": {"items": ("mask", "final"), "stack": stack,
                                      "metrics": _round(0.8, [0.1, 0.70])},
        "controls/reinit/round_001": {"items": ("mask", "init", "final"), "stack": stack,
                                      "metrics": _round(0.8, [0.1, 0.75])},
    }
    return build(directory, IMP_CONFIG, units=units, top=("init",),
                 extra={"driver.json": {"rewind": "init"}})


# --------------------------------------------------------------------- DST
def dst_config(method, density):
    return {"run": run_config(2), "method": method, "density": density,
            "distribution": "erk", "update_every": 10, "drop_fraction": None, "end": None,
            "start": 0, "initial_density": 1.0, "scope": None, "dense": []}


# test accuracy per evaluation, two replicates
RIGL_10 = [[0.10, 0.10], [0.60, 0.70], [0.80, 0.90]]
RIGL_5 = [[0.10, 0.10], [0.50, 0.70], [0.70, 0.74]]
STATIC_10 = [[0.10, 0.10], [0.50, 0.50], [0.60, 0.70]]
RIGL_2 = [[0.10, 0.10], [0.30, 0.50]]  # killed after its step-10 checkpoint
SCHEDULE = [{"step": 10, "density": 0.1, "drop_fraction": 0.3},
            {"step": 20, "density": 0.1, "drop_fraction": 0.15}]


def dst_done(directory, method="rigl", density=0.1, points=RIGL_10, schedule=SCHEDULE):
    """A finished ``lotto dst`` run: ``init``, ``start_mask``, the unit ``dst`` and
    ``results.json`` (its final mask kept ``density`` of the weights)."""
    fit = {k: v for k, v in fit_metrics(points).items() if k != "curve"}
    results = {"method": method, "model": "mlp", "dataset": "npz:tiny.npz",
               "steps": STEPS, "replicates": 2, "target_density": density,
               "distribution": "erk", "density": density, "kept": [10, 10], "total": 100,
               "layers": {}, **fit, "schedule": schedule}
    units = {"dst": {"items": ("final",), "curve": curve(*points),
                     "metrics": fit_metrics(points)}}
    return build(directory, dst_config(method, density), units=units,
                 top=("init", "start_mask"), results=results)


def dst_unfinished(directory):
    """``lotto dst`` (RigL at 2 %) killed after its step-10 checkpoint."""
    units = {"dst": {"curve": curve(*RIGL_2), "step": 10}}
    return build(directory, dst_config("rigl", 0.02), units=units,
                 top=("init", "start_mask"))


BUILDERS = {"pai": pai_done, "pai_unfinished": pai_unfinished,
            "supermask": supermask_done, "train": train_done, "imp": imp_done}

DST_BUILDERS = {
    "rigl_d0.1": dst_done,
    "rigl_d0.05": lambda d: dst_done(d, "rigl", 0.05, RIGL_5),
    "static_d0.1": lambda d: dst_done(d, "static", 0.1, STATIC_10, []),
    "rigl_d0.02": dst_unfinished,
}
"""Hand-written ``lotto dst`` runs (a sweep as ``experiments/dst_compare.sh``
lays it out), apart from :data:`BUILDERS` so that the tests over those keep
their directory."""


def templates(directory, builders=None):
    """Every hand-written run of ``builders`` (default :data:`BUILDERS`) under
    ``directory`` (once per session)."""
    out = {}
    for name, fn in (BUILDERS if builders is None else builders).items():
        path = os.path.join(directory, name)
        if not os.path.exists(os.path.join(path, "config.json")):
            shutil.rmtree(path, ignore_errors=True)
            fn(path)
        out[name] = path
    return out


def data_file(item_dir):
    """One data file of an orbax item (to corrupt)."""
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(item_dir) for f in fs
                   if os.path.basename(r) == "d")
    assert files, item_dir
    return files[0]
