"""The stages of ``lotto sft`` (:mod:`lotto_jax.runs.sft`): units, records, results.

Every stage reads its committed record back when it is there, so a rerun trains,
selects, composes and grafts nothing it already did.

With ``--replicates S > 1`` every unit holds the S replicates stacked along a
leading axis (replicate ``r``: init seed ``seed + r``, data order ``data_seed +
r``, trained in one vmapped fit); selections, sparse differences (``phi_rR``, one
item per replicate), evaluations and graftings are per replicate, and every
per-replicate value of a record is a list over the replicates (:func:`merge`).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotto_jax import data as data_lib
from lotto_jax import masks, sft
from lotto_jax.runs import common
from lotto_jax.runs.engine import Engine, Unit, abstract
from lotto_jax.runs.records import key_list
from lotto_jax.runs.writer import Clock, WriteBehind

__all__ = ["SHARED_FIELDS", "Stages", "graft_name", "merge", "phi_item", "unit_name"]

SHARED_FIELDS = ("kind", "task", "k", "fraction", "lr")
"""Record fields that are the same for every replicate (never a list)."""


def unit_name(kind: str, task: str, k: int) -> str:
    """``ltsft/B/k266``: the sparse fine-tuning of ``task`` with ``k`` weights."""
    return f"{kind}/{task}/k{k}"


def graft_name(fraction: float, lr: float) -> str:
    """``graft/f0.001/lr1e+07``: the grafting with that base patch size and rate."""
    return f"graft/f{fraction:g}/lr{lr:g}"


def phi_item(prefix: str, r: int, replicates: int) -> str:
    """The item of replicate ``r``'s φ: ``PREFIX/phi`` (one replicate), else
    ``PREFIX/phi_rR``."""
    return f"{prefix}/phi" if replicates == 1 else f"{prefix}/phi_r{r}"


def merge(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from per-replicate ones: each field a list over the replicates
    (the one record itself for one replicate), but :data:`SHARED_FIELDS`."""
    if len(recs) == 1:
        return recs[0]
    return {key: first if key in SHARED_FIELDS else [r[key] for r in recs]
            for key, first in recs[0].items()}


def _log(line: str) -> None:
    print(f"lotto: {line}", file=sys.stderr, flush=True)


class Stages:
    """One ``lotto sft`` run in its store."""

    def __init__(self, config, store, prep, ts, plain, diff, ks, n):
        self.config, self.prep, self.ts, self.ks, self.n = config, prep, ts, ks, n
        self.plain, self.diff = plain, diff
        self.S = config.run.replicates
        self.clock = Clock()
        self.raw = store
        self.store = WriteBehind(store, self.clock)
        self.kw = dict(stacked=self.S > 1, mesh=prep.mesh, save_every=config.save_every,
                       save_interval=config.save_interval, clock=self.clock)
        theta, self.data_key = common.start_weights(config.run, prep)
        self.target = abstract(theta)
        self.mask_target = abstract(masks.init(theta["params"], masks.all_leaves))
        self.theta_init = theta

    # ----------------------------------------------------------------- helpers
    def engine(self, trainer, task: str) -> Engine:
        return Engine(trainer, self.ts[task], self.data_key, self.store, **self.kw)

    def rep(self, tree, r: int):
        """Replicate ``r`` of a (stacked) tree."""
        return tree if self.S == 1 else jax.tree.map(lambda x: x[r], tree)

    def stack(self, trees: list[Any]):
        """Per-replicate trees stacked (the one tree for one replicate)."""
        return trees[0] if self.S == 1 else common.stack(trees)

    def each(self, fn) -> Any:
        """``fn(r)`` for every replicate: a list, or the one value."""
        values = [fn(r) for r in range(self.S)]
        return values[0] if self.S == 1 else values

    def seed_key(self, r: int, offset: int):
        """The key of replicate ``r``'s draws (random-K, graft scores)."""
        return jax.random.fold_in(jax.random.key(self.config.run.seed + r), offset)

    def cached(self, name: str, make) -> Any:
        """The JSON record ``name``, else ``make()`` written (committed once)."""
        if self.store.exists(name):
            return self.store.read_json(name)
        rec = make()
        self.store.write_json(name, rec)
        return rec

    def accuracy(self, params, model_state, task: str, split=None) -> float:
        """Accuracy of one replicate's weights on ``split`` (default: ``task``'s
        test split; the plain trainer's evaluation)."""
        t = self.plain
        split = self.ts[task].test if split is None else split
        state = t.init(params, model_state)
        _, acc = t.evaluate(state, masks.init(params, masks.all_leaves),
                            jnp.asarray(split.x), jnp.asarray(split.y))
        return float(acc)

    def accuracies(self, params, task: str) -> Any:
        """:meth:`accuracy` of (stacked) weights per replicate, under θ0's state."""
        ms = self.theta0["model_state"]
        return self.each(lambda r: self.accuracy(self.rep(params, r), self.rep(ms, r), task))

    def difference_start(self) -> dict[str, Any]:
        """The start of every fine-tuning: δ = 0, θ0 in the model state."""
        p0, ms0 = self.theta0["params"], self.theta0["model_state"]
        return {"params": jax.tree.map(jnp.zeros_like, p0),
                "model_state": sft.difference_state(p0, ms0)}

    # ------------------------------------------------------------------ stages
    def dense(self) -> None:
        """Pretraining on A (θ0), then the full fine-tuning on each other task (θ1)."""
        engine = self.engine(self.plain, "A")
        init = engine.load_or("init", self.target, lambda: self.theta_init)
        all_true = masks.init(init["params"], masks.all_leaves)
        (done,) = engine.run([Unit("pretrain", "pretrain", init, all_true)],
                             lambda names: "+".join(names),
                             metrics_fn=lambda u, res: res.metrics())
        self.theta0 = (done.final if done.final is not None
                       else engine.final("pretrain", self.target))
        start = self.difference_start()
        self.finetuned = {}
        for t in self.ts:
            if t == "A":
                continue
            prefix, engine = f"finetune/{t}", self.engine(self.diff[t], t)
            (done,) = engine.run([Unit(prefix, prefix, start, all_true)],
                                 lambda names: "+".join(names),
                                 metrics_fn=lambda u, res: res.metrics())
            final = (done.final if done.final is not None
                     else engine.final(prefix, abstract(start)))
            self.finetuned[t] = {"params": sft.sparse_weights(
                self.theta0["params"], final["params"], all_true),
                "model_state": self.theta0["model_state"]}

    def sparse(self, kind: str, task: str) -> dict[int, list[sft.SparseDiff]]:
        """The sparse units of ``kind`` (``ltsft`` or ``random``) on ``task``, one
        per K, trained in one stack; their φ, one per replicate."""
        engine = self.engine(self.diff[task], task)
        start = self.difference_start()
        units = []
        for i, k in enumerate(self.ks):
            prefix = unit_name(kind, task, k)
            mask = engine.load_or(f"{prefix}/mask", self.mask_target, lambda k=k, i=i: self.stack(
                [self.selection(kind, task, k, i, r) for r in range(self.S)]))
            units.append(Unit(prefix, prefix, start, mask))
        done = engine.run(units, lambda names: f"{kind} {task} " + "+".join(
            n.rsplit("/", 1)[-1] for n in names), metrics_fn=lambda u, res: res.metrics())
        out = {}
        for k, d in zip(self.ks, done, strict=True):
            out[k] = self.phi(d, engine, abstract(start))
        return out

    def selection(self, kind: str, task: str, k: int, i: int, r: int):
        """Replicate ``r``'s selection of ``k`` weights: the most changed (LT-SFT),
        or as many at random (its own key)."""
        p0 = self.rep(self.theta0["params"], r)
        chosen = sft.most_changed(p0, self.rep(self.finetuned[task]["params"], r), k)
        if kind == "ltsft":
            return chosen
        count = sum(int(jnp.sum(m)) for m in jax.tree.leaves(chosen))
        return sft.random_selection(p0, count, key=self.seed_key(r, 1000 + i))

    def phi(self, done, engine, target) -> list[sft.SparseDiff]:
        """φ = θ2 − θ0 of a finished sparse unit, per replicate (stored sparse once)."""
        prefix = done.unit.prefix
        items = [phi_item(prefix, r, self.S) for r in range(self.S)]
        if all(self.store.has(item) for item in items):
            return [sft.SparseDiff(jnp.asarray(x["indices"]), jnp.asarray(x["values"]))
                    for x in (self.store.restore(item) for item in items)]
        final = done.final if done.final is not None else engine.final(prefix, target)
        theta2 = sft.sparse_weights(self.theta0["params"], final["params"], done.unit.mask)
        out = []
        for r, item in enumerate(items):
            phi = sft.sparse_difference(self.rep(self.theta0["params"], r),
                                        self.rep(theta2, r), self.rep(done.unit.mask, r))
            if phi.indices.size:  # orbax refuses empty arrays: an empty φ is recomputed
                if not self.store.has(item):
                    self.store.save(item, {"indices": phi.indices, "values": phi.values})
            out.append(phi)
        return out

    def evaluate_sparse(self, kind: str, task: str, phis) -> list[dict[str, Any]]:
        p0, ms = self.theta0["params"], self.theta0["model_state"]
        rows = []
        for k, phi in phis.items():
            prefix = unit_name(kind, task, k)

            def one(r, selected, phi=phi, k=k):
                params, m = sft.apply_differences(self.rep(p0, r), phi[r]), self.rep(ms, r)
                return {"kind": kind, "task": task, "k": k, "fraction": k / self.n,
                        "selected": selected[r], "nnz": int(phi[r].indices.size),
                        "accuracy": self.accuracy(params, m, task),
                        "accuracy_A": self.accuracy(params, m, "A")}

            def make(one=one, prefix=prefix):
                selected = self.selected(prefix)
                return merge([one(r, selected) for r in range(self.S)])

            rows.append(self.cached(f"{prefix}/eval.json", make))
        return rows

    def selected(self, prefix: str) -> list[int]:
        """The number of weights each replicate's mask selects."""
        m = self.store.restore(f"{prefix}/mask", self.mask_target)
        return [int(sum(int(np.sum(self.rep(x, r))) for x in jax.tree.leaves(m)))
                for r in range(self.S)]

    def compose(self, phis1, phis2) -> list[dict[str, Any]]:
        p0, ms = self.theta0["params"], self.theta0["model_state"]
        rows = []
        for k in self.ks:
            def one(r, k=k):
                a, b, z, m = phis1[k][r], phis2[k][r], self.rep(p0, r), self.rep(ms, r)
                own = [self.accuracy(sft.apply_differences(z, a), m, "B1"),
                       self.accuracy(sft.apply_differences(z, b), m, "B2")]
                both = sft.apply_differences(z, a, b)
                comp = [self.accuracy(both, m, t) for t in ("B1", "B2", "B")]
                return {"k": k, "own": own, "composed": comp[:2], "composed_B": comp[2],
                        "interference": [o - c for o, c in zip(own, comp, strict=False)],
                        "overlap": int(np.intersect1d(np.asarray(a.indices),
                                                      np.asarray(b.indices)).size)}

            rows.append(self.cached(f"compose/k{k}.json", lambda one=one: merge(
                [one(r) for r in range(self.S)])))
        return rows

    def compose_full(self) -> dict[str, Any]:
        p0, ms = self.theta0["params"], self.theta0["model_state"]

        def one(r):
            z, m = self.rep(p0, r), self.rep(ms, r)
            f1 = self.rep(self.finetuned["B1"]["params"], r)
            f2 = self.rep(self.finetuned["B2"]["params"], r)
            own = [self.accuracy(f1, m, "B1"), self.accuracy(f2, m, "B2")]
            both = jax.tree.map(lambda z, a, b: z + (a - z) + (b - z), z, f1, f2)
            comp = [self.accuracy(both, m, t) for t in ("B1", "B2", "B")]
            return {"own": own, "composed": comp[:2], "composed_B": comp[2],
                    "interference": [o - c for o, c in zip(own, comp, strict=False)]}

        return self.cached("compose/full.json", lambda: merge([one(r) for r in
                                                               range(self.S)]))

    # ----------------------------------------------------------------- grafting
    def graft(self, i: int, fraction: float, lr: float) -> dict[str, Any]:
        name = graft_name(fraction, lr)
        if self.store.exists(f"{name}/metrics.json"):
            _log(f"{name}: finished, kept")
            return self.store.read_json(f"{name}/metrics.json")
        _log(f"{name}: grafting")
        found = [self.graft_one(i, fraction, lr, r) for r in range(self.S)]
        self.store.save(f"{name}/scores", self.stack([s for s, _ in found]))
        rec = merge([rec for _, rec in found])
        self.store.write_json(f"{name}/metrics.json", rec)
        return rec

    def graft_one(self, i: int, fraction: float, lr: float, r: int):
        """``(best scores, record)`` of replicate ``r``'s grafting."""
        c, ds = self.config, self.ts["B"]
        pre = self.rep(self.theta0["params"], r)
        ft = self.rep(self.finetuned["B"]["params"], r)
        ms = self.rep(self.theta0["model_state"], r)
        base = sft.base_patch(pre, ft, fraction)
        key = self.seed_key(r, 2000 + i)
        scores = sft.init_scores(pre, key=key)
        step = _graft_step_fn(self.plain.apply_fn, lr)
        select = ds.validation if ds.validation is not None else ds.train
        x, y = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)

        def selected_accuracy(s):
            return self.accuracy(sft.graft(pre, ft, sft.rounded_gamma(s, base)), ms, "B",
                                 select)

        best, best_acc, best_step = scores, selected_accuracy(scores), 0
        for s in range(c.graft_steps):
            idx = data_lib.batch_indices(key, s, num_examples=len(ds.train),
                                         batch_size=c.graft_batch)
            scores = step(scores, pre, ft, base, ms, x[idx], y[idx])
            acc = selected_accuracy(scores)
            if acc > best_acc:
                best, best_acc, best_step = scores, acc, s + 1
        region = sft.rounded_gamma(best, base)
        size = int(sum(int(jnp.sum(g)) for g in jax.tree.leaves(region)))
        acc_ft = self.accuracy(ft, ms, "B")
        acc = self.accuracy(sft.graft(pre, ft, region), ms, "B")
        return best, {
            "fraction": fraction, "lr": lr,
            "base": int(sum(int(jnp.sum(b)) for b in jax.tree.leaves(base))),
            "base_accuracy": self.accuracy(sft.graft(pre, ft, base), ms, "B"),
            "region": size, "region_fraction": size / self.n, "best_step": best_step,
            "selection_accuracy": best_acc, "accuracy": acc, "finetuned_accuracy": acc_ft,
            "pretrained_accuracy": self.accuracy(pre, ms, "B"),
            "recovered": acc / acc_ft if acc_ft else None}

    # --------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        from lotto_jax.runs import sft_report

        self.store.check_record("driver", {
            "method": "sft", "tasks": {t: sorted({int(v) for v in d.train.y})
                                       for t, d in self.ts.items()},
            "num_train": {t: len(d.train) for t, d in self.ts.items()},
            "num_weights": self.n, "data_key": key_list(self.data_key)})
        try:
            results = self.stages()
            self.store.write_json("results.json", results)
            self.store.close()
        except BaseException:
            self.store.close(raise_errors=False)
            raise
        sft_report.print_table(results)
        sft_report.figures(results, self.raw.path("figures"))
        return results

    def stages(self) -> dict[str, Any]:
        c = self.config
        self.dense()
        pre = self.cached("pretrain/eval.json", lambda: {
            t: self.accuracies(self.theta0["params"], t) for t in self.ts})
        full = {t: self.cached(f"finetune/{t}/eval.json", lambda t=t: {
            "accuracy": self.accuracies(self.finetuned[t]["params"], t),
            "accuracy_A": self.accuracies(self.finetuned[t]["params"], "A")})
            for t in self.finetuned}
        rows = self.evaluate_sparse("ltsft", "B", self.sparse("ltsft", "B"))
        if c.random_k:
            rows += self.evaluate_sparse("random", "B", self.sparse("random", "B"))
        compose = compose_full = None
        if c.compose:
            p1, p2 = self.sparse("ltsft", "B1"), self.sparse("ltsft", "B2")
            rows += self.evaluate_sparse("ltsft", "B1", p1)
            rows += self.evaluate_sparse("ltsft", "B2", p2)
            compose, compose_full = self.compose(p1, p2), self.compose_full()
        grafts = [self.graft(i, f, lr) for i, f in enumerate(c.graft_fractions)
                  for lr in c.graft_lrs]
        return {
            "method": "sft", "model": c.run.model, "dataset": c.run.dataset,
            "replicates": self.S,
            "tasks": {t: sorted({int(v) for v in d.train.y}) for t, d in self.ts.items()},
            "steps": c.run.train.steps, "finetune_steps": self.diff["B"].config.steps,
            "num_weights": self.n, "ks": list(self.ks), "pretrained": pre,
            "finetuned": full, "sparse": rows, "compose": compose,
            "compose_full": compose_full, "graft": grafts,
        }


@functools.lru_cache(maxsize=8)
def _graft_step_fn(apply_fn, lr: float):
    """The jitted score step on a batch: plain descent of the cross-entropy."""

    @jax.jit
    def step(scores, pre, ft, base, model_state, x, y):
        def loss_fn(params):
            logits, _ = apply_fn(params, model_state, x, False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return sft.graft_step(loss_fn, scores, pre, ft, base, lr=lr)

    return step
