"""``lotto earlybird``: draw an early-bird ticket during dense training, then train it.

1. **Dense** (unit ``dense``): the network trains dense to the end (the baseline).
   At every evaluation the mask magnitude pruning would give at ``density``
   (:func:`lotto_jax.prune.to_density` of |θ|, ``scope`` global or layerwise) is
   stored (``eb/masks/step_N``, its distances in the item's metadata) and put in
   the early-bird FIFO of the last ``keep`` masks
   (:func:`lotto_jax.analysis.early_bird_emerged`: the reference code's rule, the
   distances from the newest mask to each older one all ≤ ε). The first time the
   rule fires, the weights there are stored (``eb/draw``, with the mask
   ``eb/draw_mask``): the early-bird ticket.
2. **Ticket** (unit ``ticket``): the drawn mask applied to the weights at the draw
   point, trained for the full schedule from step 0 (learning rate and data order
   restarted): You et al. 2020 retrain the pruned early-bird network rather than
   rewinding it to θ0. Its cost is counted as ``draw step + steps``.

Both units go through the engine (:mod:`lotto_jax.runs.engine`): checkpointed,
resumed after a kill (the FIFO is rebuilt from the stored masks), never retrained.
Where the rule never fires, no ticket is trained and ``results.json`` says so.

The reference code draws channel masks from BatchNorm scales trained with an L1
penalty (network slimming). Here ``--structure weight`` (the default) draws
unstructured weight-magnitude masks, the extrapolation ALGORITHMS.md calls
unverified; ``--structure neuron`` (``channel`` on a conv net) draws unit masks:
the ``density`` fraction of the units, ranked by the L2 norm of their kernel
slices (:func:`lotto_jax.structured.to_density`, no slimming penalty), and the
Hamming distance is taken over units, as the reference code's over channels.

``--worm`` adds WORM (Vasudev 2024, "The EarlyBird Gets the WORM"): once the FIFO
is full and the mean of its distances falls below ``worm_elbow`` (0.15, the
"elbow"), the dense run's gradients of the currently masked-out parameters are
multiplied by ``worm_chi`` (0.003) at every later step, kept ones untouched; the
masked-out set follows the newest mask at each evaluation. The scale is
:func:`lotto_jax.sparse.scale_by_tree`'s state, first in the optimizer chain, so it
is checkpointed and resumed with the run. The reference code damps the BatchNorm
parameters of masked-out channels; here it is the masked-out weights
(``weight``) or every member parameter of a masked-out unit (``neuron`` /
``channel``: kernel slice, bias and normalisation scale and offset; not the next
layer's inputs). The dense unit is then no longer plain dense training: its
accuracy is WORM's.

References:
  You et al. 2020, "Drawing Early-Bird Tickets", arXiv:1909.11957.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from lotto_jax.runs.common import STORE_FIELDS, RunConfig, RunOptions

__all__ = ["MUTABLE_FIELDS", "EarlyBirdConfig", "figure", "imp_at", "main", "report"]

MUTABLE_FIELDS: tuple[str, ...] = (*STORE_FIELDS, "run.data_dir")


@dataclasses.dataclass(frozen=True)
class EarlyBirdConfig(RunOptions):
    """Draw an early-bird ticket in dense training and train it: ``lotto earlybird``.

    Attributes:
      run: model, data, seeds and training (of the dense run and of the ticket).
      density: the ticket's fraction of prunable weights kept, in (0, 1).
      epsilon: the draw threshold ε on the normalised Hamming distance, in (0, 1).
      keep: the FIFO length (5 in the reference code).
      scope: the magnitude mask's ranking, ``global`` or ``layerwise``.
      structure: ``weight`` (unstructured masks, distances over weights) or
        ``neuron`` / ``channel`` (unit masks: ``density`` is the fraction of units
        kept; distances over units). See the module docs.
      worm: damp the gradients of masked-out parameters after the elbow (WORM;
        module docs).
      worm_chi: WORM's gradient multiplier χ, in (0, 1].
      worm_elbow: WORM's elbow: the mean FIFO distance below which it starts, in
        (0, 1).
      imp: an IMP run (``lotto imp``) to compare with: its finished round whose
        density is closest to ``density``, its accuracy and the steps IMP trained
        to reach it (every round up to it).
      out: the run directory (layout: module docs).
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    density: float = 0.1
    epsilon: float = 0.1
    keep: int = 5
    scope: str = "global"
    structure: str = "weight"
    worm: bool = False
    worm_chi: float = 0.003
    worm_elbow: float = 0.15
    imp: str | None = None
    out: str = dataclasses.field(default="runs/earlybird", kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.density < 1:
            raise ValueError(f"density: expected a value in (0, 1), got {self.density}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon: expected a value in (0, 1), got {self.epsilon}")
        if not isinstance(self.keep, int) or self.keep < 2:
            raise ValueError(f"keep: expected an int >= 2, got {self.keep!r}")
        if self.scope not in ("global", "layerwise"):
            raise ValueError(f"scope: expected 'global' or 'layerwise', got {self.scope!r}")
        if not 0 < self.worm_chi <= 1:
            raise ValueError(f"worm_chi: expected a value in (0, 1], got {self.worm_chi}")
        if not 0 < self.worm_elbow < 1:
            raise ValueError(f"worm_elbow: expected a value in (0, 1), got {self.worm_elbow}")
        from lotto_jax import structured

        if structured.parse(self.structure).kind not in ("weight", "neuron", "channel"):
            raise ValueError(f"structure: expected 'weight', 'neuron' or 'channel', got "
                             f"{self.structure!r}")


def main(config: EarlyBirdConfig) -> dict[str, Any]:
    """Runs :class:`EarlyBirdConfig` in ``config.out`` (resuming what is there).

    Returns:
      The ``results.json`` record.
    """
    from lotto_jax.runs import common

    imp = None if config.imp is None else imp_at(config.imp, config.density)
    return common.run_in_store(config, MUTABLE_FIELDS,
                               lambda store: _main(config, store, imp))


def imp_at(directory: str, density: float) -> dict[str, Any]:
    """The finished trunk round of the IMP run in ``directory`` whose density is
    closest to ``density``: ``{"run", "round", "density", "final_test_accuracy",
    "total_steps"}`` (``total_steps``: the steps every round up to it trained).

    Raises:
      ValueError: ``directory`` is not an IMP run or has no finished round.
    """
    from lotto_jax.runs import layout

    if not os.path.isdir(directory) or layout.run_kind(directory) != "imp":
        raise ValueError(f"imp: {directory} is not an IMP run directory")
    view = layout.read(directory)
    steps = layout.total_steps(view.config) or 0
    rounds = [(int(p[6:]), u.metrics) for p, u in view.units.items()
              if p.startswith("round_") and u.status == "done"]
    if not rounds:
        raise ValueError(f"imp: {directory} has no finished round")
    r, m = min(rounds, key=lambda x: abs(x[1]["density"] - density))
    total = sum(steps - int(q.get("start_step") or 0) for i, q in rounds if i <= r)
    return {"run": os.path.abspath(directory), "round": r, "density": m["density"],
            "final_test_accuracy": m["final_test_accuracy"], "total_steps": total}


def _eval_steps(c) -> list[int]:
    return sorted({0, *range(c.eval_every, c.steps, c.eval_every), c.steps})


class _Recorder:
    """The dense unit's ``on_eval`` hook: stores each evaluation's magnitude mask
    with its FIFO distances, and the weights where the rule first fires."""

    def __init__(self, writer, draw_at, config, steps, mask_target, topology=None):
        self.writer, self.draw_at, self.config = writer, draw_at, config
        self.steps, self.mask_target, self.topology = steps, mask_target, topology
        self.cache: dict[int, Any] = {}
        self.worm_started: bool | None = None  # unknown until the first evaluation

    def view(self, mask):
        """What the distances compare: the weight mask, or its units."""
        from lotto_jax import structured

        return mask if self.topology is None else structured.units_of(mask, self.topology)

    def stored_mask(self, n):
        if n not in self.cache:
            self.cache[n] = self.writer.restore(f"eb/masks/step_{n:08d}", self.mask_target)
        return self.cache[n]

    def __call__(self, state, rec):
        from lotto_jax import analysis, masks, scores, sparse

        t, keep = int(rec.step), self.config.keep
        m = self.draw_at(scores.magnitude(state.params), masks.init(state.params))
        fifo = analysis.early_bird(epsilon=self.config.epsilon, keep=keep)
        earlier = [n for n in self.steps if n < t][-(keep - 1):]
        for n in earlier:
            fifo = analysis.early_bird_put(fifo, self.view(self.stored_mask(n)))
        fifo = analysis.early_bird_put(fifo, self.view(m))
        prunable = masks.default_prunable if self.topology is None else masks.all_leaves
        fired = analysis.early_bird_emerged(fifo, prunable=prunable)
        distances = analysis.early_bird_distances(fifo, prunable=prunable)
        worm = (self.config.worm and len(fifo.masks) == keep
                and float(np.mean(distances)) < self.config.worm_elbow)
        self.writer.save(f"eb/masks/step_{t:08d}", m, meta={
            "step": t, "distances": distances, "emerged": fired, "worm": worm})
        if fired and not self.writer.has("eb/draw"):
            self.writer.save("eb/draw_mask", m, meta={"step": t})
            self.writer.save("eb/draw", {"params": state.params,
                                         "model_state": state.model_state}, meta={"step": t})
        self.cache = {n: v for n, v in self.cache.items() if n in earlier}
        self.cache[t] = m
        self.worm_started = worm or self.worm_on(t)
        if self.worm_started:
            return state.replace(opt_state=sparse.with_scale(state.opt_state,
                                                             self.worm_scale(m)))
        return None

    def worm_on(self, t):
        """Whether WORM started at an evaluation before step ``t`` (it never stops;
        after a resume, read from the stored masks' records)."""
        if not self.config.worm:
            return False
        if self.worm_started is None:
            self.worm_started = any(
                self.writer.meta(f"eb/masks/step_{n:08d}").get("worm")
                for n in self.steps if n < t)
        return self.worm_started

    def worm_scale(self, mask):
        """1 on kept parameters, χ on masked-out ones (a unit's members only)."""
        import jax
        import jax.numpy as jnp

        from lotto_jax import masks, structured

        if self.topology is not None:
            mask = structured.expand(structured.units_of(mask, self.topology),
                                     masks.init(mask), self.topology, consumers=False)
        chi = self.config.worm_chi
        return jax.tree.map(lambda k: jnp.where(k, 1.0, chi), mask)


def _main(config: EarlyBirdConfig, store, imp) -> dict[str, Any]:
    import jax

    from lotto_jax import masks, scores, sparse, structured, train
    from lotto_jax.runs import common
    from lotto_jax.runs.engine import Engine, Unit, abstract
    from lotto_jax.runs.records import layer_counts
    from lotto_jax.runs.writer import Clock, WriteBehind

    if config.run.replicates != 1:
        raise ValueError("replicates: lotto earlybird trains one network")
    prep = common.prepare(config.run)
    theta0, data_key = common.start_weights(config.run, prep)
    all_true = masks.init(prep.params)
    mask_target = abstract(all_true)
    weights_target = abstract(theta0)
    topo = structured.topology_for(config.structure, prep.module, prep.params)
    draw_at = jax.jit(lambda s, m: structured.prune_density(
        config.structure, s, m, config.density, topology=topo, scope=config.scope,
        norm="l2"))
    try:  # a density the network cannot give (a layer emptied, say)
        jax.eval_shape(lambda p: draw_at(scores.magnitude(p), all_true), prep.params)
        if topo is not None:  # under jit an emptied layer cannot raise: check here
            structured.prune_density(config.structure, scores.magnitude(prep.params),
                                     all_true, config.density, topology=topo,
                                     scope=config.scope, norm="l2")
    except ValueError as e:
        raise ValueError(f"density: {e}") from e
    steps = _eval_steps(prep.trainer.config)
    trainer = prep.trainer if not config.worm else train.make_trainer(
        train.classifier(prep.module), config.run.train,
        num_train=prep.dataset.train.x.shape[0], mesh=prep.mesh,
        grad_transform=sparse.scale_by_tree())
    clock = Clock()
    writer = WriteBehind(store, clock)
    try:
        engine = Engine(trainer, prep.dataset, data_key, writer, clock=clock,
                        save_every=config.save_every, save_interval=config.save_interval,
                        on_eval=_Recorder(writer, draw_at, config, steps, mask_target,
                                          topo))
        start = engine.load_or("init", weights_target, lambda: theta0)

        def metrics_fn(unit, res):
            return {**layer_counts(unit.mask, masks.default_prunable), **res.metrics()}

        (dense,) = engine.run([Unit("dense", "dense", start, all_true)],
                              lambda n: "dense", metrics_fn=metrics_fn)
        engine.on_eval = None
        ticket = None
        if writer.has("eb/draw"):
            draw_mask = writer.restore("eb/draw_mask", mask_target)
            (ticket,) = engine.run(
                [Unit("ticket", "ticket", lambda: writer.restore("eb/draw", weights_target),
                      draw_mask)], lambda n: "ticket", metrics_fn=metrics_fn)
        curve = [{"step": n, **writer.meta(f"eb/masks/step_{n:08d}")} for n in steps
                 if writer.has(f"eb/masks/step_{n:08d}")]
        draw_step = writer.meta("eb/draw")["step"] if ticket is not None else None
        writer.close()
    except BaseException:
        writer.close(raise_errors=False)
        raise
    t_steps = trainer.config.steps
    worm_step = next((p["step"] for p in curve if p.get("worm")), None)
    results = {
        "model": config.run.model, "dataset": config.run.dataset, "steps": t_steps,
        "density": config.density, "epsilon": config.epsilon, "keep": config.keep,
        "scope": config.scope, "structure": config.structure, "draw_step": draw_step,
        "worm": config.worm, "worm_step": worm_step,
        "dense_final_test_accuracy": dense.metrics["final_test_accuracy"],
        "ticket_final_test_accuracy": None if ticket is None
        else ticket.metrics["final_test_accuracy"],
        "ticket_density": None if ticket is None else ticket.metrics["density"],
        "total_steps": None if ticket is None else draw_step + t_steps,
        "imp": imp, "distances": curve,
    }
    store.write_json("results.json", results)
    _print(results)
    from lotto_jax.runs import plots

    plots.save(figure(results), os.path.join(store.directory, "figures", "distance.png"))
    return results


def report(directory: str, *, figures_dir: str | None = None) -> dict[str, Any]:
    """``lotto report`` of an early-bird run: the summary and ``distance.png``.

    Raises:
      FileNotFoundError: the run has no ``results.json`` yet.
    """
    from lotto_jax.runs import layout, plots

    results, ok = layout.load_json(os.path.join(directory, "results.json"))
    if not ok or not isinstance(results, dict):
        raise FileNotFoundError(f"{directory}: no finished early-bird results (results.json)")
    _print(results)
    plots.save(figure(results), os.path.join(figures_dir or os.path.join(directory, "figures"),
                                             "distance.png"))
    return results


def _print(results: dict[str, Any]) -> None:
    rows = [("dense final test accuracy", f"{100 * results['dense_final_test_accuracy']:.2f}%")]
    if results["draw_step"] is None:
        rows.append(("early-bird ticket", f"none drawn in {results['steps']} steps "
                                          f"(ε = {results['epsilon']})"))
    else:
        rows += [("draw step", str(results["draw_step"])),
                 ("ticket density", f"{100 * results['ticket_density']:.2f}%"),
                 ("ticket final test accuracy",
                  f"{100 * results['ticket_final_test_accuracy']:.2f}%"),
                 ("total training steps", f"{results['total_steps']} (draw + retrain)")]
    imp = results.get("imp")
    if imp is not None:
        rows.append((f"IMP round {imp['round']} ({100 * imp['density']:.2f}%)",
                     f"{100 * float(np.mean(imp['final_test_accuracy'])):.2f}% after "
                     f"{imp['total_steps']} steps"))
    width = max(len(k) for k, _ in rows)
    of = "" if results.get("structure", "weight") == "weight" else " of the units"
    print(f"early-bird ticket of {results['model']} / {results['dataset']} at "
          f"{100 * results['density']:.3g}%{of}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def figure(results: dict[str, Any]):
    """Mask distance over training: the largest FIFO distance (the rule's) and the
    distance to the previous mask, ε, and the draw step."""
    from lotto_jax.runs import plots

    pts = [p for p in results["distances"] if p.get("distances")]
    if not pts:
        pts = [{"step": 0, "distances": [float("nan")]}]
    steps = [p["step"] for p in pts]
    series = {"max distance in FIFO (rule)": (steps, [max(p["distances"]) for p in pts], None),
              "distance to previous mask": (steps, [p["distances"][-1] for p in pts], None)}
    fig = plots.curve_figure(series, ylabel="Normalised Hamming distance",
                             title=f"early-bird masks at {100 * results['density']:.3g}%")
    ax = fig.axes[0]
    ax.axhline(results["epsilon"], color="gray", linestyle="--", label="ε")
    if results["draw_step"] is not None:
        ax.axvline(results["draw_step"], color="red", linestyle=":",
                   label=f"draw (step {results['draw_step']})")
    ax.legend()
    return fig
