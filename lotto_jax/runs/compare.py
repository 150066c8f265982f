"""``lotto compare``: how much the masks of runs agree, layer by layer.

Read-only on the runs. Each argument is a run directory, optionally ``DIR@R`` for
round ``R`` of an IMP run (else ``--round``, else its last stored round) and
``#I`` for replicate ``I`` of a replicated run (else ``--replicate``):
``DIR@10#2``. The mask compared is, per kind of run: IMP ``round_RRR/mask``; PaI the method's
``variants/METHOD/mask``; dst the last mask (``dst/final``); train its ``mask``.
Tickets of different seeds: ``lotto compare RUN@10#0 RUN@10#1 RUN@10#2``.

* Two masks: one row per prunable layer (:func:`lotto_jax.analysis.overlap_table`):
  its size, the kept counts of A and B, the weights both keep, Jaccard
  |a ∧ b| / |a ∨ b| and Hamming (fraction of differing bits), then ``all``;
  heatmap ``overlap.png``: layers × (Jaccard, Hamming).
* Three or more: the Jaccard and Hamming matrices over all of them
  (:func:`lotto_jax.analysis.overlap_matrix`); heatmap ``overlap.png`` of Jaccard.

``OUT/compare.json`` holds the numbers, ``OUT/overlap.png`` the heatmap.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np
import tyro

__all__ = ["CompareConfig", "heatmap", "load_mask", "main"]


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Per-layer Jaccard / Hamming overlap of runs' masks: ``lotto compare A B [C ...]``.

    Attributes:
      runs: run directories (positional), ``DIR@R`` for round R of an IMP run,
        ``#I`` (``DIR@R#I``) for replicate I of a replicated run.
      round: the IMP round for runs given without ``@R`` (default: each IMP run's
        last stored round).
      replicate: the replicate of replicated runs given without ``#I``.
      out: where ``compare.json`` and ``overlap.png`` go (the runs are only read).
    """

    runs: tyro.conf.Positional[tuple[str, ...]] = ()
    round: int | None = None
    replicate: int = 0
    out: str = "runs/compare"

    def __post_init__(self):
        if len(self.runs) < 2:
            raise ValueError(f"runs: expected at least 2 run directories, got {len(self.runs)}")
        if self.round is not None and self.round < 0:
            raise ValueError(f"round: expected a round >= 0, got {self.round}")
        if self.replicate < 0:
            raise ValueError(f"replicate: expected an int >= 0, got {self.replicate}")


def _spec(spec: str, default_round: int | None, default_replicate: int
          ) -> tuple[str, int | None, int, str]:
    """``DIR[@R][#I]`` -> ``(DIR, round, replicate, suffix for the label)``."""
    m = re.fullmatch(r"(.+?)(?:@(\d+))?(?:#(\d+))?", spec)
    r = default_round if m.group(2) is None else int(m.group(2))
    i = default_replicate if m.group(3) is None else int(m.group(3))
    return m.group(1), r, i, "" if m.group(3) is None else f"#{i}"


def load_mask(spec: str, *, round: int | None = None, replicate: int = 0
              ) -> tuple[Any, str, str]:
    """``(mask, label, model)`` of one argument of ``lotto compare`` (module docs).

    Raises:
      ValueError: not a run directory, a kind without a mask (supermask), an IMP
        round or a replicate the run lacks.
    """
    import jax

    from lotto_jax.runs import layout
    from lotto_jax.runs.store import RunStore

    d, r, replicate, tag = _spec(spec, round, replicate)
    if not os.path.isdir(d) or not layout.is_run(d):
        raise ValueError(f"runs: {d} is not a run directory")
    config, _ = layout.load_json(os.path.join(d, "config.json"))
    config = config if isinstance(config, dict) else {}
    kind = layout.run_kind(d)
    store, label = RunStore(d), os.path.basename(os.path.normpath(d))
    if kind == "imp":
        have = sorted(int(n[6:]) for n in os.listdir(d) if re.fullmatch(r"round_\d+", n)
                      and store.has(f"{n}/mask"))
        if not have or (r is not None and r not in have):
            raise ValueError(f"round: {d} has no round {r} (its rounds: "
                             f"{', '.join(map(str, have)) or 'none'})")
        r = have[-1] if r is None else r
        item, label = f"round_{r:03d}/mask", f"{label}@{r}"
    elif kind == "pai":
        item, label = f"variants/{config.get('method')}/mask", f"{label} ({config.get('method')})"
    elif kind == "dst":
        item, label = "dst/final", f"{label} ({config.get('method')})"
    elif kind == "train":
        item = "mask"
    else:
        raise ValueError(f"runs: {d} is a {kind} run; compare reads IMP, PaI, dst and "
                         "train runs")
    if not store.has(item):
        raise ValueError(f"runs: {d} has no {item} yet (unfinished?)")
    tree = store.restore(item)
    mask = tree["mask"] if kind == "dst" else tree
    n = int((config.get("run") or {}).get("replicates") or 1)
    if replicate >= n:
        raise ValueError(f"replicate: {replicate} is not below {d}'s {n} replicates")
    if n > 1:
        mask = jax.tree.map(lambda x: x[replicate], mask)
        label += tag
    mask = jax.tree.map(lambda x: np.asarray(x).astype(bool), mask)
    return mask, label, str((config.get("run") or {}).get("model", "?"))


def heatmap(values, rows: list[str], cols: list[str], *, title: str, vmax: float = 1.0):
    """A matplotlib ``Figure``: ``values`` (rows × cols) as colours, each cell
    annotated with its value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    v = np.asarray(values, float)
    fig = Figure(figsize=(1.2 + 1.1 * len(cols), 1.2 + 0.5 * len(rows)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(v, vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(v.shape[0]):
        for j in range(v.shape[1]):
            ax.text(j, i, f"{v[i, j]:.2f}", ha="center", va="center",
                    color="white" if v[i, j] < 0.6 * vmax else "black", fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return fig


def _print(header: list[str], rows: list[list[str]], title: str) -> None:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    print("\n".join([title, line(header), line(["-" * w for w in widths]),
                     *(line(r) for r in rows)]))


def main(config: CompareConfig) -> dict[str, Any]:
    """Compares the masks of ``config.runs``; prints the table, writes
    ``compare.json`` and ``overlap.png`` into ``config.out``; returns the record.

    Raises:
      ValueError: a run that is not one, has no such round or replicate, or runs
        of different models (naming both).
    """
    from lotto_jax import analysis
    from lotto_jax.runs import plots

    loaded = [load_mask(s, round=config.round, replicate=config.replicate)
              for s in config.runs]
    for spec, (_, _, model) in zip(config.runs[1:], loaded[1:], strict=True):
        if model != loaded[0][2]:
            raise ValueError(f"runs: {config.runs[0]} is a {loaded[0][2]} model but "
                             f"{spec} is a {model} model: masks of different models "
                             "cannot be compared")
    mask_list = [m for m, _, _ in loaded]
    labels = [label for _, label, _ in loaded]
    prunable = _prunable(mask_list)
    os.makedirs(config.out, exist_ok=True)
    if len(mask_list) == 2:
        t = analysis.overlap_table(*mask_list, prunable=prunable)
        record = {"runs": labels, "model": loaded[0][2], "layers": t}
        _print(["layer", "total", "kept A", "kept B", "both", "jaccard", "hamming"],
               [[name, str(r["total"]), str(r["kept_a"]), str(r["kept_b"]), str(r["both"]),
                 f"{r['jaccard']:.4f}", f"{r['hamming']:.4f}"] for name, r in t.items()],
               f"overlap of A = {labels[0]} and B = {labels[1]}")
        fig = heatmap([[r["jaccard"], r["hamming"]] for r in t.values()], list(t),
                      ["Jaccard", "Hamming"], title=f"{labels[0]} vs {labels[1]}")
    else:
        jac = analysis.overlap_matrix(mask_list, prunable=prunable)
        ham = analysis.overlap_matrix(mask_list, metric="hamming", prunable=prunable)
        record = {"runs": labels, "model": loaded[0][2], "jaccard": jac.tolist(),
                  "hamming": ham.tolist()}
        _print(["", *labels], [[a, *(f"{x:.4f}" for x in row)] for a, row in
                               zip(labels, jac, strict=True)], "Jaccard overlap")
        fig = heatmap(jac, labels, labels, title="Jaccard overlap of the masks")
    with open(os.path.join(config.out, "compare.json"), "w") as f:
        json.dump(record, f, indent=2)
    plots.save(fig, os.path.join(config.out, "overlap.png"))
    return record


def _prunable(mask_list):
    """The leaves any of the masks prunes (kernels always: the default rule)."""
    import jax

    from lotto_jax import masks

    flat = [jax.tree_util.tree_flatten_with_path(m)[0] for m in mask_list]
    pruned = {jax.tree_util.keystr(p) for f in flat for p, x in f if not np.all(x)}

    def prunable(path, leaf):
        return masks.default_prunable(path, leaf) or jax.tree_util.keystr(path) in pruned

    return prunable
