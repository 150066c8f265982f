"""The rounds and controls of one :func:`lotto_jax.runs.imp_loop.run_imp` call as
engine runs (``_Imp``), the jitted pruning and control-mask helpers they call, and the
result types :class:`RoundResult` and :class:`ImpResult`.

Import the public names from :mod:`lotto_jax.runs.imp_loop` (or :mod:`lotto_jax.runs`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import imp, masks, structured, train
from lotto_jax._types import Mask, Params
from lotto_jax.runs import common
from lotto_jax.runs.engine import Engine, Unit, abstract
from lotto_jax.runs.records import layer_counts, trees_equal
from lotto_jax.runs.store import CorruptCheckpointError, round_name

__all__ = ["ImpResult", "RoundResult"]


class RoundResult(NamedTuple):
    """One trained network of an IMP run (or its replicates).

    Attributes:
      round: the round index (0 = dense).
      control: ``None`` for the trunk, else the control's name.
      mask: the mask it was trained under (with a leading replicate axis for
        replicated runs).
      metrics: the JSON record of ``metrics.json``: ``density``, ``layers``
        (per-layer ``kept``, ``total``, ``density``), ``final_test_accuracy``,
        ``early_stop_step``, ``early_stop_test_accuracy``, ``best_test_accuracy``,
        ``curve`` (evaluation records), ``start_step``, ``hold_lr``, and with
        ``timing=True`` ``timing``. For replicated runs the accuracies, steps,
        curve values and per-layer counts are lists over replicates and
        ``density`` is their mean.
    """

    round: int
    control: str | None
    mask: Mask
    metrics: dict[str, Any]

    @property
    def density(self) -> float:
        return self.metrics["density"]


class ImpResult(NamedTuple):
    """What :func:`run_imp` produced.

    Attributes:
      rounds: the trunk's rounds ``0..rounds``.
      controls: control name -> its rounds ``1..rounds``.
      params: θT of the last trunk round (the final ticket's weights, pruned).
      model_state: its model state.
      directory: the run directory, or ``None`` without a store.
      timing: per round, the wall-time split of what this call did there:
        ``{"round", "train_s", "eval_s", "prune_s", "checkpoint_s", "total_s"}``
        (trunk and controls together; see :mod:`lotto_jax.runs.imp_loop`).
    """

    rounds: list[RoundResult]
    controls: dict[str, list[RoundResult]]
    params: Params
    model_state: Any
    directory: str | None
    timing: list[dict[str, float]] | None = None


def _replica(leaf, stacked: bool):
    """What ``prunable`` sees of a leaf: one replicate's shape when stacked."""
    return jax.ShapeDtypeStruct(np.shape(leaf)[1:], leaf.dtype) if stacked else leaf


@jax.jit
def _copy(tree):
    # The train chunk donates its state: never hand it arrays we keep.
    return jax.tree.map(jnp.copy, tree)


_init_mask = jax.jit(masks.init, static_argnums=1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _control_masks(control, mask, key, prunable, stacked, groups):
    """The control's mask, per replicate (own key) when ``stacked``."""
    one = lambda m, k: imp.control_mask(control, m, k, prunable=prunable,  # noqa: E731
                                        groups=groups)
    return jax.vmap(one)(mask, key) if stacked else one(mask, key)


def _control_keys(key, control: str, r: int, stacked: bool):
    one = lambda k: imp.control_key(k, control, r)  # noqa: E731
    return jax.vmap(one)(key) if stacked else one(key)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prune(rule, final_params, mask, stacked=False):
    """``rule = (score_fn, fraction, scope, groups, layer_fractions items, prunable,
    structure, topology)``: :func:`lotto_jax.imp.next_mask`, per replicate when
    ``stacked``."""
    score_fn, fraction, scope, groups, layer_fractions, prunable, structure, topo = rule

    def one(p, m):
        return imp.next_mask(p, m, fraction=fraction, scope=scope, groups=groups,
                             layer_fractions=dict(layer_fractions), score_fn=score_fn,
                             prunable=prunable, structure=structure, topology=topo)

    return jax.vmap(one)(final_params, mask) if stacked else one(final_params, mask)


def _draw(init_fn, key, stacked: bool) -> dict[str, Any]:
    """Fresh ``{"params", "model_state"}`` from ``init_fn`` (one per replicate key)."""
    if not stacked:
        return dict(zip(("params", "model_state"), init_fn(key), strict=True))
    return common.stack([_draw(init_fn, k, False) for k in key])


class _Imp:
    """One :func:`run_imp` call: the rounds and controls as engine runs."""

    def __init__(self, engine: Engine, params0, model_state0, *, rounds, rewind, rule,
                 controls, key, init_fn, stack_controls, timing):
        self.engine, self.store, self.clock = engine, engine.store, engine.clock
        self.stacked, self.rounds, self.rewind, self.rule = engine.stacked, rounds, rewind, rule
        self.controls, self.key, self.init_fn = controls, key, init_fn
        self.stack_controls, self.timing = stack_controls, timing
        self.steps = engine.trainer.config.steps
        self.k_step = imp.parse_rewind(rewind, self.steps)[1]
        self.groups, self.prunable = rule[3], rule[5]
        self.mask_all = _init_mask(params0, self.prunable)
        jax.eval_shape(lambda p, m: _prune(rule, p, m, self.stacked), params0, self.mask_all)
        self.weights_target = abstract({"params": params0, "model_state": model_state0})
        self.mask_target = abstract(self.mask_all)
        self.theta0 = self._theta0({"params": params0, "model_state": model_state0})
        self.memo: dict[str, Any] = {}  # θK, kept in memory once known
        self.finals: dict[int, Any] = {}  # θT of the last two trunk rounds
        self.ready: Callable[[], None] = lambda: None
        if rounds > 0 and not (self.store is not None
                               and self.store.has(f"{round_name(rounds)}/mask")):
            # Not a daemon: when the main thread fails early (a corrupt checkpoint,
            # say), this thread may still be inside XLA compiling at interpreter
            # exit, where a daemon thread is ended by pthread_exit; its forced
            # unwind hits a C++ catch(...) in XLA, and the process aborts
            # ("terminate called after throwing an instance of ''", exit 134).
            warmer = threading.Thread(target=self._warm, name="lotto-warm", daemon=False)
            warmer.start()
            self.ready = warmer.join

    def _theta0(self, theta0):
        if self.store is not None and self.store.has("init"):
            stored = self.store.restore("init", self.weights_target)
            if not trees_equal(stored, theta0):
                raise ValueError(
                    f"params0: differs from the θ0 stored in {self.store.path('init')}; "
                    "pass the same initial weights (same seed) or use another directory"
                )
            return stored
        self.engine.save("init", theta0)
        return theta0

    def _warm(self):
        # Compiles pruning and the control masks (seconds on a CPU) while round 0
        # trains: the same signatures as the real calls, so they hit the cache.
        try:
            p, m = self.theta0["params"], self.mask_all
            if self.engine.mesh is not None:  # trained weights, hence masks, are placed
                from lotto_jax.sharding import param_shardings, place

                p, m = (place(t, param_shardings(t, self.engine.mesh)) for t in (p, m))
            m = _prune(self.rule, p, m, self.stacked)[0]
            for c in self.controls:
                if c != "reinit":
                    _control_masks(c, m, _control_keys(self.key, c, 1, self.stacked),
                                   self.prunable, self.stacked, self.groups)
        except Exception:  # the real call raises it where it belongs
            pass

    def prune_next(self, final_params, mask):
        with self.clock("prune"):
            self.ready()
            new, bad = _prune(self.rule, final_params, mask, self.stacked)
            flat_bad = jax.tree_util.tree_flatten_with_path(bad)[0]
            for (path, n), m in zip(flat_bad, jax.tree.leaves(mask), strict=True):
                if self.prunable(path, _replica(m, self.stacked)) and int(np.sum(n)):
                    raise ValueError(
                        f"score_fn: scores{jax.tree_util.keystr(path)} has "
                        f"{int(np.sum(n))} NaN or infinite scores on kept weights"
                    )
            self._check_units(new)
            return jax.block_until_ready(new)

    def _check_units(self, new):
        """Structured pruning under jit cannot refuse to empty a unit group: here."""
        structure, topo = self.rule[6], self.rule[7]
        if structure.kind not in ("neuron", "channel"):
            return
        rows = [jax.tree.map(lambda x, i=i: x[i], new)
                for i in range(jax.tree.leaves(new)[0].shape[0])] if self.stacked else [new]
        for row in rows:
            if empty := structured.empty_groups(row, topo):
                raise ValueError(
                    f"fraction: pruning {self.rule[1]} of the units left {empty} without "
                    "any unit; a layer needs at least one (use a smaller --fraction, "
                    "fewer --rounds or --scope layerwise)"
                )

    def theta_k(self):
        if "rewind" not in self.memo:
            if self.store is None or not self.store.has("rewind"):
                raise CorruptCheckpointError(
                    f"{self.store.path('rewind') if self.store else 'rewind'}: the rewind "
                    f"point θ{self.k_step} is missing although round 0 finished"
                )
            self.memo["rewind"] = self.store.restore("rewind", self.weights_target)
        return self.memo["rewind"]

    def final(self, r):
        if r not in self.finals:
            self.finals[r] = self.engine.final(round_name(r), self.weights_target)
        for old in [q for q in self.finals if q < r - 1]:
            del self.finals[old]
        return self.finals[r]

    def unit(self, r, prefix, name, mask, weights=None) -> Unit:
        """Round r's unit from its rewind point (weights loaded only if it trains)."""
        which, step, hold = imp.round_start(self.rewind, r, self.steps)
        if weights is None:
            weights = {"init": lambda: self.theta0, "rewind": self.theta_k,
                       "previous": lambda: self.final(r - 1)}[which]
        return Unit(prefix, name, weights, mask, step, hold)

    def describe(self, r, mask):
        density = layer_counts(mask, self.prunable, self.stacked)["density"]
        return lambda names: f"{'+'.join(names)} {r}/{self.rounds} ({100 * density:.1f}%)"

    def metrics_fn(self, snap, stack=None):
        def fn(u: Unit, res: train.FitResult) -> dict[str, Any]:
            m = {"start_step": u.step, "hold_lr": u.hold, "rewind": self.rewind,
                 **layer_counts(u.mask, self.prunable, self.stacked), **res.metrics()}
            if self.timing:
                m["timing"] = {**self.clock.since(snap), **({"stack": stack} if stack else {})}
            return m
        return fn

    def trunk(self, r, prev, snap) -> RoundResult:
        name = round_name(r)
        mask = self.engine.load_or(
            f"{name}/mask", self.mask_target,
            (lambda: self.mask_all) if r == 0
            else (lambda: self.prune_next(self.final(r - 1)["params"], prev)),
        )
        stop = on_stop = None
        if (imp.parse_rewind(self.rewind, self.steps)[0] == "step" and r == 0
                and not (self.store is not None and self.store.has("rewind"))):
            def on_stop(st):
                self.memo["rewind"] = _copy({"params": st.params,
                                             "model_state": st.model_state})
                self.engine.save("rewind", self.memo["rewind"])
            stop = self.k_step
        (done,) = self.engine.run(
            [self.unit(r, name, "round", mask)],
            self.describe(r, mask), metrics_fn=self.metrics_fn(snap), stop_at=stop,
            on_stop=on_stop)
        if done.trained:
            self.finals[r] = done.final
            self.final(r)  # drops older rounds from memory
        return RoundResult(r, None, mask, done.metrics)

    def controls_of(self, r, mask) -> list[tuple[str, RoundResult]]:
        """The controls of round ``r`` in CONTROLS order; the unfinished ones trained
        together (one stack) unless ``stack_controls`` is off."""
        units = []
        for c in self.controls:
            ckey = _control_keys(self.key, c, r, self.stacked)

            def make_mask(c=c, ckey=ckey):
                with self.clock("prune"):
                    self.ready()
                    return jax.block_until_ready(_control_masks(
                        c, mask, ckey, self.prunable, self.stacked, self.groups))

            cname = round_name(r, c)
            cmask = self.engine.load_or(f"{cname}/mask", self.mask_target, make_mask)
            weights = None
            if c == "reinit":
                def weights(cname=cname, ckey=ckey):
                    return self.engine.load_or(f"{cname}/init", self.weights_target,
                                               lambda: self._draw(ckey))
            units.append(self.unit(r, cname, c, cmask, weights))
        stacks = [units] if self.stack_controls else [[u] for u in units]
        done = []
        for stack in stacks:
            snap = self.clock.snapshot()
            done += self.engine.run(
                stack, self.describe(r, mask),
                metrics_fn=self.metrics_fn(snap, [u.name for u in stack]))
        return [(d.unit.name, RoundResult(r, d.unit.name, d.unit.mask, d.metrics))
                for d in done]

    def _draw(self, ckey):
        with self.clock("prune"):
            return jax.block_until_ready(_draw(self.init_fn, ckey, self.stacked))

    def run(self) -> ImpResult:
        trunk: list[RoundResult] = []
        ctrl: dict[str, list[RoundResult]] = {c: [] for c in self.controls}
        timings: list[dict[str, float]] = []
        mask = None
        for r in range(self.rounds + 1):
            t_round, snap = time.perf_counter(), self.clock.snapshot()
            trunk.append(self.trunk(r, mask, snap))
            mask = trunk[-1].mask
            if r > 0:
                for c, rr in self.controls_of(r, mask):
                    ctrl[c].append(rr)
            timings.append({"round": r, **self.clock.since(snap),
                            "total_s": time.perf_counter() - t_round})
        last = self.final(self.rounds)
        return ImpResult(
            rounds=trunk, controls=ctrl, params=last["params"],
            model_state=last["model_state"],
            directory=None if self.store is None else self.store.directory, timing=timings,
        )
