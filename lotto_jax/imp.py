"""Iterative magnitude pruning (IMP) with rewinding and controls: the lottery-ticket
driver.

Round ``r`` trains the network under mask ``m_r`` from a *rewind point*, scores the
trained weights θT (|θT| by default), and removes a fraction of the surviving weights
(:func:`lotto_jax.prune.by_fraction`) to get ``m_{r+1}``. Round 0 trains the dense
network; after ``rounds`` pruning rounds the density is about ``(1 - p)^rounds``
(exact counts: each layer loses ``round(p · kept)`` weights, rounded half up).

Rewinding modes (``rewind=``), i.e. where round ``r >= 1`` starts:

* ``"init"``: survivors reset to θ0, step 0 (Frankle & Carbin 2019).
* ``"step:K"``: survivors reset to θK, the weights after ``K`` steps of the first,
  dense run; training resumes at step ``K`` with the learning-rate schedule and the
  data order of step ``K`` and a fresh optimizer state, for the remaining
  ``T - K`` steps (Frankle et al. 2020).
* ``"lr"``: learning-rate rewinding: keep the trained θT of the previous round
  (pruned), replay the whole schedule from step 0 (Renda et al. 2020).
* ``"finetune"``: keep θT, train for the same budget at the final learning rate
  ``schedule(T - 1)`` (Renda et al. 2020's fine-tuning baseline).

Controls (``controls=``), run for every round ``r >= 1`` at the trunk's per-layer
densities of that round, from the same rewind point (same start step, schedule and
data order), reusing the trunk's stored masks and weights; the trunk is never
retrained for them:

* ``"reinit"``: the trunk's mask, fresh initial weights θ0' drawn with another key
  by the same initialiser (``init_fn``); for ``step:K`` θ0' starts at step ``K``.
* ``"shuffle"``: each layer's mask permuted at random (:func:`lotto_jax.masks.shuffle`).
* ``"random"``: a random mask with the trunk's exact per-layer counts, from random
  scores (:func:`random_mask`). In distribution this equals ``"shuffle"`` (a
  uniformly random subset of each layer's size); it is an independent draw.

Every step ends in the :mod:`lotto_jax.store` (when a store is given): a killed run
resumes from its last checkpoint and ends bit-for-bit where an uninterrupted run
would. The trainer is built once; every round and control runs through the same
compiled step.

References:
  Frankle & Carbin 2019, "The Lottery Ticket Hypothesis", arXiv:1803.03635.
  Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery
  Ticket Hypothesis", arXiv:1912.05671 (and "Stabilizing the LTH", arXiv:1903.01611).
  Renda, Frankle & Carbin 2020, "Comparing Rewinding and Fine-tuning in Neural
  Network Pruning", arXiv:2003.02389.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lotto_jax import common, masks, models, prune, scores, train
from lotto_jax import data as data_lib
from lotto_jax._types import Mask, Params, PRNGKey, Prunable
from lotto_jax.store import CorruptCheckpointError, RunStore, round_name

__all__ = [
    "CONTROLS",
    "MUTABLE_FIELDS",
    "ImpConfig",
    "ImpResult",
    "RoundResult",
    "main",
    "parse_rewind",
    "random_mask",
    "run_imp",
]

CONTROLS: tuple[str, ...] = ("reinit", "shuffle", "random")
"""The control names, in the order they run."""

MUTABLE_FIELDS: tuple[str, ...] = (
    "rounds", "controls", "save_every", "out", "overwrite", "new_dir", "run.data_dir",
)
"""ImpConfig fields that may change when a run directory is resumed."""


@dataclasses.dataclass(frozen=True)
class ImpConfig:
    """An IMP run: ``lotto imp --model lenet300 --rounds 10 --rewind step:500``.

    Attributes:
      run: model, data, seeds and training of every round.
      rounds: pruning rounds; rounds ``0..rounds`` are trained (round 0 dense).
        May be raised on an existing run to extend it.
      fraction: fraction of the surviving weights removed per round (Frankle &
        Carbin 2019: 0.2 for fully connected layers).
      output_fraction: fraction removed per round from the ``output`` layer (0.1 in
        Frankle & Carbin 2019); ``None`` prunes it like the others.
      scope: ``"layerwise"`` (each layer loses ``fraction`` of its survivors) or
        ``"global"`` (one threshold over all layers; the ``output`` layer is pruned
        on its own when ``output_fraction`` is set).
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"`` (module docs).
      controls: any of ``reinit``, ``shuffle``, ``random``, run at every round >= 1.
        Controls may be added to a finished run: the trunk is not retrained.
      prune_biases: prune biases too (every leaf, each its own layer), as the
        MNIST-1D notebook does; by default only kernels (``ndim >= 2``).
      out: the run directory (see :mod:`lotto_jax.store` for its layout).
      save_every: steps between mid-round checkpoints, taken at evaluation points;
        ``None`` checkpoints at every evaluation.
      overwrite: delete an existing run in ``out`` and start afresh.
      new_dir: if ``out`` holds a run with another config, run in ``out_1``,
        ``out_2``, ... instead of refusing.
    """

    run: common.RunConfig = dataclasses.field(default_factory=common.RunConfig)
    rounds: int = 5
    fraction: float = 0.2
    output_fraction: float | None = 0.1
    scope: str = "layerwise"
    rewind: str = "init"
    controls: tuple[str, ...] = ()
    prune_biases: bool = False
    out: str = "runs/imp"
    save_every: int | None = None
    overwrite: bool = False
    new_dir: bool = False

    def __post_init__(self):
        if not isinstance(self.rounds, int) or self.rounds < 0:
            raise ValueError(f"rounds: expected an int >= 0, got {self.rounds!r}")
        if not 0 <= self.fraction < 1:
            raise ValueError(f"fraction: expected a value in [0, 1), got {self.fraction}")
        if self.output_fraction is not None and not 0 <= self.output_fraction < 1:
            raise ValueError(
                f"output_fraction: expected a value in [0, 1) or None, "
                f"got {self.output_fraction}"
            )
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"scope: expected 'layerwise' or 'global', got {self.scope!r}")
        _check_controls(self.controls)
        parse_rewind(self.rewind, self.run.train.steps)
        _check_save_every(self.save_every)


class RoundResult(NamedTuple):
    """One trained network of an IMP run.

    Attributes:
      round: the round index (0 = dense).
      control: ``None`` for the trunk, else the control's name.
      mask: the mask it was trained under.
      metrics: the JSON record of ``metrics.json``: ``density``, ``layers``
        (per-layer ``kept``, ``total``, ``density``), ``final_test_accuracy``,
        ``early_stop_step``, ``early_stop_test_accuracy``, ``best_test_accuracy``,
        ``curve`` (evaluation records), ``start_step``, ``hold_lr``.
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
    """

    rounds: list[RoundResult]
    controls: dict[str, list[RoundResult]]
    params: Params
    model_state: Any
    directory: str | None


def parse_rewind(rewind: str, steps: int) -> tuple[str, int]:
    """Parses a rewinding mode into ``(kind, K)``.

    Args:
      rewind: ``"init"``, ``"step:K"`` with ``0 < K < steps``, ``"lr"`` or
        ``"finetune"``.
      steps: the training steps of one round.

    Returns:
      ``("init" | "step" | "lr" | "finetune", K)`` with ``K = 0`` except for step.

    Raises:
      ValueError: an unknown mode or ``K`` outside ``(0, steps)``.

    Examples:
      >>> parse_rewind("step:100", 1000), parse_rewind("lr", 1000)
      (('step', 100), ('lr', 0))
    """
    if rewind in ("init", "lr", "finetune"):
        return rewind, 0
    if isinstance(rewind, str) and rewind.startswith("step:"):
        k = rewind[len("step:") :]
        if k.isdigit() and 0 < int(k) < steps:
            return "step", int(k)
        raise ValueError(
            f"rewind: {rewind!r}: K must be an integer with 0 < K < steps={steps}"
        )
    raise ValueError(
        f"rewind: expected 'init', 'step:K', 'lr' or 'finetune', got {rewind!r}"
    )


def _check_controls(controls: Sequence[str]) -> None:
    if isinstance(controls, str):
        raise ValueError(f"controls: expected a sequence of names, got {controls!r}")
    bad = [c for c in controls if c not in CONTROLS]
    if bad or len(set(controls)) != len(controls):
        raise ValueError(
            f"controls: expected distinct names among {CONTROLS}, got {tuple(controls)}"
        )


def _check_save_every(save_every: int | None) -> None:
    if save_every is not None and (not isinstance(save_every, int) or save_every <= 0):
        raise ValueError(f"save_every: expected a positive int or None, got {save_every!r}")


def random_mask(mask: Mask, key: PRNGKey, *, prunable: Prunable = masks.default_prunable) -> Mask:
    """A random mask with the same kept count as ``mask`` in every prunable leaf.

    Each prunable leaf keeps the weights with the highest i.i.d. N(0, 1) scores
    (:func:`lotto_jax.scores.random`), exactly as many as ``mask`` keeps there;
    other leaves are returned unchanged. The result is a uniformly random subset of
    each layer's size: in distribution the same as :func:`lotto_jax.masks.shuffle`,
    drawn independently.

    Args:
      mask: gives the structure and the per-leaf counts.
      key: a PRNG key.
      prunable: which leaves to redraw.

    Returns:
      The new mask.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = {"w": jnp.arange(12).reshape(3, 4) < 5}
      >>> int(random_mask(m, jax.random.key(0))["w"].sum())
      5

    References:
      Frankle & Carbin 2019, arXiv:1803.03635 (random pruning control).
    """
    draws = scores.random(jax.tree.map(lambda m: jnp.zeros(jnp.shape(m)), mask), key=key)

    def redraw(path, m, s):
        if not prunable(path, m):
            return m
        flat = jnp.ravel(s)
        ranks = jnp.argsort(jnp.argsort(-flat, stable=True), stable=True)
        return (ranks < jnp.sum(m)).reshape(jnp.shape(m))

    return jax.tree_util.tree_map_with_path(redraw, mask, draws)


def _control_mask(control: str, mask: Mask, key: PRNGKey, prunable: Prunable) -> Mask:
    if control == "reinit":
        return mask
    if control == "shuffle":
        return masks.shuffle(mask, key, prunable=prunable)
    return random_mask(mask, key, prunable=prunable)


def _layers(mask: Mask, prunable: Prunable) -> dict[str, Any]:
    """Total and per-layer kept counts and densities of the prunable leaves."""
    layers = {}
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if prunable(path, m):
            kept, total = int(np.asarray(m).sum()), int(np.size(m))
            layers[masks.path_str(path)] = {
                "kept": kept, "total": total, "density": kept / total,
            }
    kept = sum(v["kept"] for v in layers.values())
    total = sum(v["total"] for v in layers.values())
    return {"density": kept / total, "kept": kept, "total": total, "layers": layers}


def _metrics(result: train.FitResult, mask, prunable, **extra) -> dict[str, Any]:
    return {
        **extra,
        **_layers(mask, prunable),
        "final_test_accuracy": result.final_test_accuracy,
        "early_stop_step": result.early_stop_step,
        "early_stop_test_accuracy": result.early_stop_test_accuracy,
        "best_test_accuracy": result.best_test_accuracy,
        "curve": [r._asdict() for r in result.curve],
    }


@jax.jit
def _copy(tree):
    # The train chunk donates its state: never hand it arrays we keep.
    return jax.tree.map(jnp.copy, tree)


_control_mask_jit = jax.jit(_control_mask, static_argnums=(0, 3))
_init_mask = jax.jit(masks.init, static_argnums=1)


@functools.partial(jax.jit, static_argnums=0)
def _prune(rule, final_params, mask):
    """``rule = (score_fn, fraction, scope, layer_fractions items, prunable)``:
    the next mask, and per leaf the count of non-finite scores on kept weights."""
    score_fn, fraction, scope, layer_fractions, prunable = rule
    s = score_fn(final_params)
    bad = jax.tree.map(lambda x, m: jnp.sum(m & ~jnp.isfinite(x)), s, mask)
    new = prune.by_fraction(s, mask, fraction, scope=scope,
                            layer_fractions=dict(layer_fractions), prunable=prunable)
    return new, bad


@functools.partial(jax.jit, static_argnums=0)
def _start(trainer, weights, mask, step):
    """The start state of a round: masked weights, fresh optimizer state, ``step``."""
    return trainer.init(masks.apply(weights["params"], mask),
                        jax.tree.map(jnp.copy, weights["model_state"]), step=step)


def _fingerprint(fn: Callable) -> str:
    """A stable name for a function (no memory addresses): recorded, then compared."""
    if isinstance(fn, functools.partial):
        return f"partial({_fingerprint(fn.func)})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"


def _abstract(tree):
    """Abstract leaves; committed arrays keep their sharding (restored like them)."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            jnp.shape(x), jnp.result_type(x),
            sharding=x.sharding if getattr(x, "committed", False) else None,
        ),
        tree,
    )


def _key_list(key) -> list:
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).tolist()


def _trees_equal(a, b) -> bool:
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.shape(x) == np.shape(y) and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


class _Runner:
    """Trains one network (a trunk round or a control round), with checkpoints."""

    def __init__(self, trainer, dataset, data_key, store, save_every, progress):
        self.trainer, self.dataset, self.data_key = trainer, dataset, data_key
        self.store, self.save_every, self.progress = store, save_every, progress

    def train(self, prefix, start, mask, *, hold_lr, description, stop_at=None,
              on_stop=None):
        """Trains from ``start()`` (or the latest checkpoint of ``prefix``) to the end.

        With ``stop_at=K``, training pauses at step ``K`` and ``on_stop(state)``
        runs (to save θK) before it goes on.
        """
        if self.store is not None and self.store.latest_step_number(prefix) is not None:
            # restored with the placement of a fresh start state: the same signature
            state, meta = self.store.latest_step(prefix, _abstract(start()))
            history = [train.EvalRecord(**r) for r in meta["curve"]]
        else:
            state, history = start(), []
        curve = list(history)
        last = {"step": int(state.step)}

        def callback(st, rec):
            curve.append(rec)
            step, steps = int(rec.step), self.trainer.config.steps
            if self.store is None or not 0 < step < steps:
                return
            every = self.save_every or 1
            if step // every > last["step"] // every:
                self.store.save_step(
                    prefix, step, st, meta={"curve": [r._asdict() for r in curve]}
                )
                last["step"] = step

        kw = dict(data_key=self.data_key, hold_lr=hold_lr, callback=callback,
                  progress=self.progress, description=description)
        if stop_at is not None and on_stop is not None:
            if int(state.step) > stop_at:
                raise CorruptCheckpointError(
                    f"{prefix}: resumed at step {int(state.step)} but the rewind point "
                    f"of step {stop_at} was never saved"
                )
            state, res = train.fit(self.trainer, state, mask, self.dataset,
                                   until=stop_at, history=history, **kw)
            history = res.curve
            on_stop(state)
        return train.fit(self.trainer, state, mask, self.dataset, history=history, **kw)


def run_imp(
    trainer: train.Trainer,
    params0: Params,
    model_state0: Any,
    dataset: data_lib.Dataset,
    *,
    rounds: int,
    fraction: float = 0.2,
    scope: str = "layerwise",
    layer_fractions: Mapping[str, float] | None = None,
    rewind: str = "init",
    controls: Sequence[str] = (),
    data_key: PRNGKey,
    key: PRNGKey,
    store: RunStore | str | None = None,
    score_fn: Callable[[Params], Any] = scores.magnitude,
    prunable: Prunable = masks.default_prunable,
    init_fn: Callable[[PRNGKey], tuple[Params, Any]] | None = None,
    save_every: int | None = None,
    progress: bool | None = None,
) -> ImpResult:
    """Runs IMP for ``rounds`` pruning rounds, with rewinding and controls.

    Works with any params pytree and ``apply_fn`` (through ``trainer``). With a
    ``store`` every mask, θ0, θK, final weights and metrics are saved; re-running
    the same call on the same store skips finished rounds and controls and resumes
    an unfinished one from its last checkpoint.

    Args:
      trainer: from :func:`lotto_jax.train.make_trainer`, built once; every round
        and control reuses its compiled step.
      params0: θ0, the initial weights.
      model_state0: the initial non-trained collections (``{}`` if none).
      dataset: train / validation / test arrays.
      rounds: pruning rounds; rounds ``0..rounds`` are trained.
      fraction: fraction of the surviving prunable weights removed per round.
      scope: ``"layerwise"`` or ``"global"`` (:func:`lotto_jax.prune.by_fraction`).
      layer_fractions: ``{regex: fraction}`` for layers pruned at their own rate,
        e.g. ``{"^output/": 0.1}``.
      rewind: ``"init"``, ``"step:K"``, ``"lr"`` or ``"finetune"`` (module docs).
      controls: any of ``"reinit"``, ``"shuffle"``, ``"random"``.
      data_key: the key of the data order (shared by all rounds and controls).
      key: the key of the controls (fresh weights, shuffles, random masks); the
        control ``c`` of round ``r`` uses ``fold_in(fold_in(key, index(c)), r)``.
      store: a :class:`lotto_jax.store.RunStore`, a directory, or ``None`` to keep
        everything in memory.
      score_fn: ``score_fn(params) -> scores``; higher scores are kept.
      prunable: which leaves are pruned (:func:`lotto_jax.masks.all_leaves` prunes
        biases too).
      init_fn: ``init_fn(key) -> (params, model_state)``, a fresh draw of the
        initialiser; required by the ``"reinit"`` control.
      save_every: steps between mid-round checkpoints (at evaluation points);
        ``None``: at every evaluation.
      progress: show progress bars (default: when stderr is a terminal).

    Returns:
      An :class:`ImpResult`.

    Raises:
      ValueError: bad arguments, or ``params0`` differing from the θ0 stored in
        ``store``.
      lotto_jax.store.ConfigMismatchError: ``store`` holds a run made with other
        arguments (``rounds`` and ``controls`` may change).
      lotto_jax.store.CorruptCheckpointError: a stored checkpoint is altered.

    References:
      Frankle & Carbin 2019, arXiv:1803.03635; Frankle et al. 2020,
      arXiv:1912.05671; Renda et al. 2020, arXiv:2003.02389.
    """
    steps = trainer.config.steps
    kind, k_step = parse_rewind(rewind, steps)
    _check_controls(controls)
    _check_save_every(save_every)
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds: expected an int >= 0, got {rounds!r}")
    if "reinit" in controls and init_fn is None:
        raise ValueError("init_fn: the 'reinit' control needs init_fn(key) -> (params, model_state)")
    model_state0 = {} if model_state0 is None else model_state0
    controls = [c for c in CONTROLS if c in controls]
    record = {
        "rounds": rounds, "fraction": fraction, "scope": scope,
        "layer_fractions": dict(layer_fractions or {}), "rewind": rewind,
        "controls": controls, "train": common.config_to_dict(trainer.config),
        "num_train": trainer.num_train, "score_fn": _fingerprint(score_fn),
        "prunable": _fingerprint(prunable),
        "data_key": _key_list(data_key),
        "key": _key_list(key),
    }
    if isinstance(store, str):
        store = RunStore.open(store, record, mutable=("rounds", "controls"))
    if store is not None:
        store.check_record("driver", record, mutable=("rounds", "controls"))

    rule = (score_fn, fraction, scope, tuple((layer_fractions or {}).items()), prunable)

    def prune_next(final_params, mask):
        new, bad = _prune(rule, final_params, mask)
        flat_bad = jax.tree_util.tree_flatten_with_path(bad)[0]
        for (path, n), m in zip(flat_bad, jax.tree.leaves(mask), strict=True):
            if prunable(path, m) and int(n):
                raise ValueError(
                    f"score_fn: scores{jax.tree_util.keystr(path)} has {int(n)} NaN or "
                    "infinite scores on kept weights"
                )
        return new

    mask_all = _init_mask(params0, prunable)
    jax.eval_shape(functools.partial(_prune, rule), params0, mask_all)  # bad args fail here
    weights_target = _abstract({"params": params0, "model_state": model_state0})
    mask_target = _abstract(mask_all)
    runner = _Runner(trainer, dataset, data_key, store, save_every, progress)

    def save(item, tree):
        if store is not None:
            store.save(item, tree)

    def finished(prefix):
        if store is None or not store.exists(f"{prefix}/metrics.json"):
            return False
        store.clear_steps(prefix)  # leftovers of a kill right after the marker
        return True

    def load_or(item, target, make):
        if store is not None and store.has(item):
            return store.restore(item, target)
        if store is not None and finished(item.rsplit("/", 1)[0]):
            store.verify(item)  # a finished round lost an item: raises
        tree = make()
        save(item, tree)
        return tree

    # θ0
    theta0 = {"params": params0, "model_state": model_state0}
    if store is not None and store.has("init"):
        stored = store.restore("init", weights_target)
        if not _trees_equal(stored, theta0):
            raise ValueError(
                f"params0: differs from the θ0 stored in {store.path('init')}; pass the "
                "same initial weights (same seed) or use another directory"
            )
        theta0 = stored
    else:
        save("init", theta0)
    memo: dict[str, Any] = {}  # θK, kept in memory once known

    def theta_k():
        if "rewind" not in memo:
            if store is None or not store.has("rewind"):
                raise CorruptCheckpointError(
                    f"{store.path('rewind') if store else 'rewind'}: the rewind point "
                    f"θ{k_step} is missing although round 0 finished"
                )
            memo["rewind"] = store.restore("rewind", weights_target)
        return memo["rewind"]

    finals: dict[int, Any] = {}  # θT of the last two trunk rounds

    def final(r):
        if r not in finals:
            finals[r] = store.restore(f"{round_name(r)}/final", weights_target)
        for old in [q for q in finals if q < r - 1]:
            del finals[old]
        return finals[r]

    def source(r):
        """(weights, start step, hold_lr) of round r's rewind point."""
        if r == 0 or kind == "init":
            return theta0, 0, -1
        if kind == "step":
            return theta_k(), k_step, -1
        return final(r - 1), 0, (steps - 1 if kind == "finetune" else -1)

    def start_fn(weights, mask, step):
        return lambda: _start(trainer, weights, mask, jnp.asarray(step, jnp.int32))

    def train_one(prefix, weights, mask, step, hold, description, **kw):
        state, res = runner.train(
            prefix, start_fn(weights, mask, step), mask, hold_lr=hold,
            description=description, **kw,
        )
        out = {"params": state.params, "model_state": state.model_state}
        metrics = _metrics(res, mask, prunable, start_step=step, hold_lr=hold,
                           rewind=rewind)
        if store is not None:
            store.save(f"{prefix}/final", out)
            store.write_json(f"{prefix}/metrics.json", metrics)  # the round is done
            store.clear_steps(prefix)
        return out, metrics

    trunk: list[RoundResult] = []
    ctrl: dict[str, list[RoundResult]] = {c: [] for c in controls}
    mask = None
    for r in range(rounds + 1):
        name = round_name(r)
        prev = mask
        mask = load_or(
            f"{name}/mask", mask_target,
            (lambda: mask_all) if r == 0
            else (lambda r=r, prev=prev: prune_next(final(r - 1)["params"], prev)),
        )
        density = _layers(mask, prunable)["density"]
        if finished(name):
            metrics = store.read_json(f"{name}/metrics.json")
        else:
            weights, step, hold = source(r)
            stop = on_stop = None
            if kind == "step" and r == 0:
                def on_stop(st):
                    memo["rewind"] = _copy({"params": st.params,
                                            "model_state": st.model_state})
                    save("rewind", memo["rewind"])
                stop = k_step
                if store is not None and store.has("rewind"):
                    stop = on_stop = None
            out, metrics = train_one(
                name, weights, mask, step, hold,
                f"round {r}/{rounds} ({100 * density:.1f}%)",
                stop_at=stop, on_stop=on_stop,
            )
            finals[r] = out
            final(r)  # drops older rounds from memory
        trunk.append(RoundResult(r, None, mask, metrics))
        if r == 0:
            continue
        for ci, c in enumerate(CONTROLS):
            if c not in controls:
                continue
            ckey = jax.random.fold_in(jax.random.fold_in(key, ci), r)
            cname = round_name(r, c)
            cmask = load_or(
                f"{cname}/mask", mask_target,
                functools.partial(_control_mask_jit, c, mask, ckey, prunable),
            )
            if finished(cname):
                cmetrics = store.read_json(f"{cname}/metrics.json")
            else:
                weights, step, hold = source(r)
                if c == "reinit":
                    weights = load_or(
                        f"{cname}/init", weights_target,
                        lambda ckey=ckey: dict(zip(("params", "model_state"),
                                                   init_fn(ckey), strict=True)),
                    )
                _, cmetrics = train_one(
                    cname, weights, cmask, step, hold,
                    f"{c} {r}/{rounds} ({100 * density:.1f}%)",
                )
            ctrl[c].append(RoundResult(r, c, cmask, cmetrics))
    last = final(rounds)
    return ImpResult(
        rounds=trunk, controls=ctrl, params=last["params"],
        model_state=last["model_state"],
        directory=None if store is None else store.directory,
    )


def main(config: ImpConfig) -> ImpResult:
    """Runs :class:`ImpConfig`: prepares data and model, runs IMP in ``config.out``
    (resuming what is there), prints the table and returns the result."""
    from lotto_jax import report

    store = RunStore.open(
        config.out, common.config_to_dict(config), overwrite=config.overwrite,
        new_dir=config.new_dir, mutable=MUTABLE_FIELDS,
    )
    prep = common.prepare(config.run)
    prunable = masks.all_leaves if config.prune_biases else masks.default_prunable
    layer_fractions = (
        None if config.output_fraction is None
        else {f"^{models.OUTPUT_LAYER}/": config.output_fraction}
    )

    def init_fn(key):
        variables = models.init(prep.module, key, prep.dataset.input_shape)
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    result = run_imp(
        prep.trainer, prep.params, prep.model_state, prep.dataset,
        rounds=config.rounds, fraction=config.fraction, scope=config.scope,
        layer_fractions=layer_fractions, rewind=config.rewind,
        controls=config.controls, data_key=prep.data_key,
        key=jax.random.fold_in(jax.random.key(config.run.seed), 1),
        store=store, prunable=prunable, init_fn=init_fn, save_every=config.save_every,
    )
    report.print_table(report.load_run(store.directory))
    return result
