"""``lotto export``: a run's ticket as a smaller dense network or as sparse matrices.

Reads a run directory (any kind whose unit stores a final ``{"params",
"model_state"}`` and a mask: an IMP round or control, a PaI variant, a ``lotto
train`` run, a DST run; of a supermask run, the found network of its ``export/``:
weights ⊙ mask, times the signs of the sign method), rebuilds the model from ``config.json``, and writes to
``--out DIR``::

  DIR/
    params/        an orbax checkpoint (StandardCheckpointHandler: plain orbax reads
                   it). compact: the compacted network's params (nested dicts);
                   bcoo: every dense kernel as {"data": (nse,), "indices": (nse, 2)}
                   (the kept entries of W (in, out)), other leaves dense
    model_state/   the other collections, when the model has any (VGG's
                   batch_stats, sliced like its channels)
    export.json    format, model (a lotto_jax.models name and the keyword arguments
                   that build the network: models.build(model, **model_kwargs)),
                   the kernels' dense shapes (bcoo), the source (run, unit,
                   replicate) and the compaction report (lotto_jax.export.compact)

The directory is written whole in ``DIR.tmp`` and renamed: a killed export leaves
no partial ``DIR``. See README.md ("Export") for loading it in plain JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any

import tyro

from lotto_jax.runs import layout

__all__ = ["ExportConfig", "main"]

_MANIFEST = ".manifest.json"
_NAMES = {"MLP": "mlp", "LeNet300": "mlp", "MNIST1DMLP": "mnist1d_mlp",
          "ResMLP": "resmlp", "LeNet5": "lenet5", "ConvNet": "conv2", "VGG": "vgg11"}
_FIELDS = {"mlp": ("features",), "mnist1d_mlp": ("hidden", "residual"),
           "resmlp": ("blocks", "width", "hidden", "hiddens"), "lenet5": ("widths",),
           "conv2": ("plan", "dense"), "vgg11": ("plan",)}


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Export a ticket: ``lotto export runs/imp --round 3 --format compact --out t3``.

    Attributes:
      dir: the run directory (positional).
      out: the directory to write (refused if it exists, unless ``overwrite``).
      round: IMP: the round whose ticket (its final weights under its mask) is
        exported; default: the last round with stored final weights.
      unit: the unit to export by its directory in the run, for any kind
        (``round_002``, ``controls/random/round_002``, ``variants/snip``,
        ``train``, ``dst``); default: ``round`` for IMP, else the run's one unit.
      replicate: which replicate of a run trained with ``--replicates S``.
      format: ``compact`` (a smaller dense network: lotto_jax.export.compact) or
        ``bcoo`` (the kept weights of every dense kernel as sparse COO indices and
        values; the MLPs).
      overwrite: replace ``out`` if it holds an earlier export.
    """

    dir: tyro.conf.Positional[str]
    out: str
    round: int | None = None
    unit: str | None = None
    replicate: int = 0
    format: str = "compact"
    overwrite: bool = False

    def __post_init__(self):
        if self.format not in ("compact", "bcoo"):
            raise ValueError(f"format: expected 'compact' or 'bcoo', got {self.format!r}")
        if self.round is not None and self.round < 0:
            raise ValueError(f"round: expected >= 0, got {self.round}")
        if self.replicate < 0:
            raise ValueError(f"replicate: expected >= 0, got {self.replicate}")


def _has_final(directory: str, prefix: str) -> bool:
    return os.path.exists(os.path.join(directory, prefix, "final" + _MANIFEST))


def _pick_unit(config: ExportConfig, view: layout.RunView) -> str:
    """The unit to export (its prefix), or a ValueError listing the choices."""
    if view.kind == "supermask":  # the found network: export/{weights,mask,signs}
        if config.round is not None or config.unit not in (None, "export", "search"):
            raise ValueError(f"unit: a supermask run has one network, its export/ "
                             f"(no --round; --unit export), got {config.unit or config.round}")
        if not os.path.exists(os.path.join(view.path, "export", "mask" + _MANIFEST)):
            raise ValueError(f"unit: the supermask search in {view.path} has not exported "
                             "its network yet (no export/mask)")
        return "export"
    finals = [u for u in layout.unit_dirs(view.path, view.kind) if _has_final(view.path, u)]
    listing = ", ".join(finals) or "none"
    if config.unit is not None:
        if config.unit not in finals:
            raise ValueError(f"unit: {config.unit!r} has no stored final weights in "
                             f"{view.path}; units with one: {listing}")
        return config.unit
    if config.round is not None:
        if view.kind != "imp":
            raise ValueError(f"round: a {view.kind} run has no rounds; pick a unit "
                             f"with --unit ({listing})")
        rounds = [u for u in finals if re.fullmatch(r"round_\d+", u)]
        name = f"round_{config.round:03d}"
        if name not in rounds:
            have = ", ".join(str(int(r[6:])) for r in rounds) or "none"
            raise ValueError(f"round: round {config.round} has no stored final weights "
                             f"in {view.path}; rounds with one: {have}")
        return name
    if view.kind == "imp":
        rounds = [u for u in finals if re.fullmatch(r"round_\d+", u)]
        if rounds:
            return rounds[-1]
    elif len(finals) == 1:
        return finals[0]
    raise ValueError(f"unit: pick the unit to export with --unit (or --round); units "
                     f"with stored final weights in {view.path}: {listing}")


def _ticket(config: ExportConfig, view: layout.RunView, prefix: str):
    """``(params, mask, model_state)`` of one replicate of unit ``prefix``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lotto_jax import masks
    from lotto_jax.runs.store import RunStore

    store = RunStore(view.path)
    if view.kind == "supermask":  # weights ⊙ mask, times signs for the sign method
        final = {"params": store.restore("export/weights"),
                 "model_state": store.restore("export/model_state")
                 if store.has("export/model_state") else {}}
        if store.has("export/signs"):
            final["params"] = jax.tree.map(lambda w, s: np.asarray(w) * np.asarray(s),
                                           final["params"], store.restore("export/signs"))
    else:
        final = store.restore(f"{prefix}/final")
    params, model_state = final["params"], final.get("model_state") or {}
    if store.has(f"{prefix}/mask"):
        mask = store.restore(f"{prefix}/mask")
    elif "mask" in final:  # dst: the last mask rides in the final
        mask = final["mask"]
    elif store.has("mask"):  # train: the run's one mask
        mask = store.restore("mask")
    else:
        mask = None
    replicates = int((view.config.get("run") or {}).get("replicates") or 1)
    if replicates > 1:
        if config.replicate >= replicates:
            raise ValueError(f"replicate: expected < {replicates} (the run's replicates), "
                             f"got {config.replicate}")
        pick = lambda t: jax.tree.map(lambda x: np.asarray(x)[config.replicate], t)  # noqa: E731
        params, model_state = pick(params), pick(model_state)
        mask = None if mask is None else pick(mask)
    elif config.replicate != 0:
        raise ValueError(f"replicate: the run has one replicate, got {config.replicate}")
    params = jax.tree.map(jnp.asarray, params)
    mask = masks.init(params) if mask is None else jax.tree.map(
        lambda m: jnp.asarray(m, bool), mask)
    return params, mask, model_state


def _check_out(config: ExportConfig) -> str:
    out = os.path.abspath(config.out)
    if os.path.exists(out):
        if not config.overwrite:
            raise ValueError(f"out: {out} exists; pass --overwrite to replace it")
        if os.listdir(out) and not os.path.exists(os.path.join(out, "export.json")):
            raise ValueError(f"out: {out} is not an export (no export.json); refusing "
                             "to delete it")
    return out


def main(config: ExportConfig) -> dict[str, Any]:
    """Exports one ticket of a run (the module docs); returns ``export.json``'s record.

    Raises:
      FileNotFoundError: the run directory does not exist (or is not a run).
      ValueError: a round, unit or replicate the run does not have (the message
        lists the existing ones), ``out`` exists, or a model that the format does
        not cover (no unit topology for ``compact``, not an MLP for ``bcoo``).
    """
    directory = os.path.abspath(config.dir)
    if not os.path.isdir(directory) or not layout.is_run(directory):
        raise FileNotFoundError(f"dir: {directory}: no such run directory")
    view = layout.read(directory)
    model = (view.config.get("run") or {}).get("model")
    if not isinstance(model, str):
        raise ValueError(f"dir: {directory}/config.json names no model (run.model)")
    import jax
    import numpy as np
    from jax.experimental.sparse import BCOO

    from lotto_jax import export, models

    module = models.build(model)
    kinds = (models.MLP, models.MNIST1DMLP, models.ResMLP)
    if config.format == "bcoo" and not isinstance(module, kinds):
        raise ValueError(f"format: bcoo export covers the MLPs (mlp, lenet300, "
                         f"mnist1d_mlp, resmlp), not {model}")
    if config.format == "compact" and not isinstance(module, export._COMPACTABLE):
        raise ValueError(f"model: compact covers the unit topologies of mlp, lenet300, "
                         f"mnist1d_mlp, resmlp, conv2/4/6, lenet5 and vgg11/16, not "
                         f"{model}")
    prefix = _pick_unit(config, view)
    out = _check_out(config)
    params, mask, model_state = _ticket(config, view, prefix)
    module = models.build(model, num_classes=int(params["output"]["kernel"].shape[-1]))
    record: dict[str, Any] = {
        "format": config.format,
        "source": {"run": directory, "unit": prefix, "replicate": config.replicate},
    }
    if config.format == "compact":
        c = export.compact(module, params, mask, model_state=model_state)
        name = _NAMES[type(c.module).__name__]
        kwargs = {f: getattr(c.module, f) for f in _FIELDS[name]}
        tree, model_state = c.params, c.model_state
        record.update(model=name, num_classes=c.module.num_classes,
                      model_kwargs=json.loads(json.dumps(kwargs, default=list)),
                      report=c.report)
    else:
        sp = export.to_bcoo(params, mask)
        is_sp = lambda x: isinstance(x, BCOO)  # noqa: E731
        tree = jax.tree.map(lambda x: {"data": x.data, "indices": x.indices}
                            if is_sp(x) else x, sp, is_leaf=is_sp)
        shapes = {}
        for path, x in jax.tree_util.tree_flatten_with_path(sp, is_leaf=is_sp)[0]:
            if is_sp(x):
                shapes["/".join(str(k.key) for k in path)] = list(x.shape)
        kept = int(sum(int(np.sum(m)) for m in jax.tree.leaves(mask)))
        record.update(model=model, num_classes=module.num_classes, model_kwargs={},
                      shapes=shapes, report={"params_before": models.count_params(params),
                                             "kept_before": kept})
    _write(out, tree, model_state, record)
    rep = record["report"]
    after = rep.get("params_after", rep["kept_before"])
    print(f"lotto export: {prefix} of {directory} -> {out} ({config.format}): "
          f"{rep['params_before']:,} params, {rep['kept_before']:,} kept -> {after:,}"
          + (f"; units {rep['units_before']} -> {rep['units_after']}"
             if "units_after" in rep else ""))
    return record


def _write(out: str, params: Any, model_state: Any, record: dict[str, Any]) -> None:
    import orbax.checkpoint as ocp

    from lotto_jax.runs.store import write_json_atomic

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ckpt = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    ckpt.save(os.path.join(tmp, "params"), args=ocp.args.StandardSave(params))
    if model_state:
        ckpt.save(os.path.join(tmp, "model_state"), args=ocp.args.StandardSave(model_state))
    write_json_atomic(os.path.join(tmp, "export.json"), record)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)
