"""The stages of ``lotto sft`` (:mod:`lotto_jax.runs.sft`): units, records, results.

Every stage reads its committed record back when it is there, so a rerun trains,
selects, composes and grafts nothing it already did.
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

__all__ = ["Stages", "graft_name", "unit_name"]


def unit_name(kind: str, task: str, k: int) -> str:
    """``ltsft/B/k266``: the sparse fine-tuning of ``task`` with ``k`` weights."""
    return f"{kind}/{task}/k{k}"


def graft_name(fraction: float, lr: float) -> str:
    """``graft/f0.001/lr1e+07``: the grafting with that base patch size and rate."""
    return f"graft/f{fraction:g}/lr{lr:g}"


def _log(line: str) -> None:
    print(f"lotto: {line}", file=sys.stderr, flush=True)


class Stages:
    """One ``lotto sft`` run in its store."""

    def __init__(self, config, store, prep, ts, plain, diff, ks, n):
        self.config, self.prep, self.ts, self.ks, self.n = config, prep, ts, ks, n
        self.plain, self.diff = plain, diff
        self.clock = Clock()
        self.raw = store
        self.store = WriteBehind(store, self.clock)
        self.kw = dict(stacked=False, mesh=prep.mesh, save_every=config.save_every,
                       save_interval=config.save_interval, clock=self.clock)
        theta, _ = common.start_weights(config.run, prep)
        self.target = abstract(theta)
        self.mask_target = abstract(masks.init(theta["params"], masks.all_leaves))
        self.theta_init = theta

    # ----------------------------------------------------------------- helpers
    def engine(self, trainer, task: str) -> Engine:
        return Engine(trainer, self.ts[task], self.prep.data_key, self.store, **self.kw)

    def cached(self, name: str, make) -> Any:
        """The JSON record ``name``, else ``make()`` written (committed once)."""
        if self.store.exists(name):
            return self.store.read_json(name)
        rec = make()
        self.store.write_json(name, rec)
        return rec

    def accuracy(self, params, model_state, task: str) -> float:
        """Test accuracy of weights on ``task`` (the plain trainer's evaluation)."""
        t = self.plain
        split = self.ts[task].test
        state = t.init(params, model_state)
        _, acc = t.evaluate(state, masks.init(params, masks.all_leaves),
                            jnp.asarray(split.x), jnp.asarray(split.y))
        return float(acc)

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

    def sparse(self, kind: str, task: str) -> dict[int, sft.SparseDiff]:
        """The sparse units of ``kind`` (``ltsft`` or ``random``) on ``task``, one
        per K, trained in one stack; their φ."""
        engine = self.engine(self.diff[task], task)
        start = self.difference_start()
        units = []
        for i, k in enumerate(self.ks):
            prefix = unit_name(kind, task, k)
            mask = engine.load_or(f"{prefix}/mask", self.mask_target,
                                  functools.partial(self.selection, kind, task, k, i))
            units.append(Unit(prefix, prefix, start, mask))
        done = engine.run(units, lambda names: f"{kind} {task} " + "+".join(
            n.rsplit("/", 1)[-1] for n in names), metrics_fn=lambda u, res: res.metrics())
        out = {}
        for k, d in zip(self.ks, done, strict=True):
            out[k] = self.phi(d, engine, abstract(start))
        return out

    def selection(self, kind: str, task: str, k: int, i: int):
        p0, p1 = self.theta0["params"], self.finetuned[task]["params"]
        chosen = sft.most_changed(p0, p1, k)
        if kind == "ltsft":
            return chosen
        count = sum(int(jnp.sum(m)) for m in jax.tree.leaves(chosen))
        key = jax.random.fold_in(jax.random.key(self.config.run.seed), 1000 + i)
        return sft.random_selection(p0, count, key=key)

    def phi(self, done, engine, target) -> sft.SparseDiff:
        """φ = θ2 − θ0 of a finished sparse unit (stored sparse once)."""
        item = f"{done.unit.prefix}/phi"
        if self.store.has(item):
            r = self.store.restore(item)
            return sft.SparseDiff(jnp.asarray(r["indices"]), jnp.asarray(r["values"]))
        final = done.final if done.final is not None else engine.final(done.unit.prefix,
                                                                       target)
        p0 = self.theta0["params"]
        theta2 = sft.sparse_weights(p0, final["params"], done.unit.mask)
        phi = sft.sparse_difference(p0, theta2, done.unit.mask)
        if phi.indices.size:  # orbax refuses empty arrays: an empty φ is recomputed
            self.store.save(item, {"indices": phi.indices, "values": phi.values})
        return phi

    def evaluate_sparse(self, kind: str, task: str, phis) -> list[dict[str, Any]]:
        rows = []
        for k, phi in phis.items():
            prefix = unit_name(kind, task, k)

            def make(phi=phi, k=k, prefix=prefix):
                params = sft.apply_differences(self.theta0["params"], phi)
                ms = self.theta0["model_state"]
                return {"kind": kind, "task": task, "k": k, "fraction": k / self.n,
                        "selected": self.selected(prefix), "nnz": int(phi.indices.size),
                        "accuracy": self.accuracy(params, ms, task),
                        "accuracy_A": self.accuracy(params, ms, "A")}

            rows.append(self.cached(f"{prefix}/eval.json", make))
        return rows

    def selected(self, prefix: str) -> int:
        m = self.store.restore(f"{prefix}/mask", self.mask_target)
        return int(sum(int(np.sum(x)) for x in jax.tree.leaves(m)))

    def compose(self, phis1, phis2) -> list[dict[str, Any]]:
        p0, ms = self.theta0["params"], self.theta0["model_state"]
        rows = []
        for k in self.ks:
            def make(k=k):
                a, b = phis1[k], phis2[k]
                own = [self.accuracy(sft.apply_differences(p0, a), ms, "B1"),
                       self.accuracy(sft.apply_differences(p0, b), ms, "B2")]
                both = sft.apply_differences(p0, a, b)
                comp = [self.accuracy(both, ms, t) for t in ("B1", "B2", "B")]
                return {"k": k, "own": own, "composed": comp[:2], "composed_B": comp[2],
                        "interference": [o - c for o, c in zip(own, comp, strict=False)],
                        "overlap": int(np.intersect1d(np.asarray(a.indices),
                                                      np.asarray(b.indices)).size)}

            rows.append(self.cached(f"compose/k{k}.json", make))
        return rows

    def compose_full(self) -> dict[str, Any]:
        p0, ms = self.theta0["params"], self.theta0["model_state"]

        def make():
            f1, f2 = self.finetuned["B1"]["params"], self.finetuned["B2"]["params"]
            own = [self.accuracy(f1, ms, "B1"), self.accuracy(f2, ms, "B2")]
            both = jax.tree.map(lambda z, a, b: z + (a - z) + (b - z), p0, f1, f2)
            comp = [self.accuracy(both, ms, t) for t in ("B1", "B2", "B")]
            return {"own": own, "composed": comp[:2], "composed_B": comp[2],
                    "interference": [o - c for o, c in zip(own, comp, strict=False)]}

        return self.cached("compose/full.json", make)

    # ----------------------------------------------------------------- grafting
    def graft(self, i: int, fraction: float, lr: float) -> dict[str, Any]:
        name = graft_name(fraction, lr)
        if self.store.exists(f"{name}/metrics.json"):
            _log(f"{name}: finished, kept")
            return self.store.read_json(f"{name}/metrics.json")
        _log(f"{name}: grafting")
        c, ds = self.config, self.ts["B"]
        pre, ft = self.theta0["params"], self.finetuned["B"]["params"]
        ms = self.theta0["model_state"]
        base = sft.base_patch(pre, ft, fraction)
        key = jax.random.fold_in(jax.random.key(c.run.seed), 2000 + i)
        scores = sft.init_scores(pre, key=key)
        step = _graft_step_fn(self.plain.apply_fn, lr)
        select = ds.validation if ds.validation is not None else ds.train
        x, y = jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
        best, best_acc, best_step = scores, self.selected_accuracy(base, scores, select), 0
        for s in range(c.graft_steps):
            idx = data_lib.batch_indices(key, s, num_examples=len(ds.train),
                                         batch_size=c.graft_batch)
            scores = step(scores, pre, ft, base, ms, x[idx], y[idx])
            acc = self.selected_accuracy(base, scores, select)
            if acc > best_acc:
                best, best_acc, best_step = scores, acc, s + 1
        region = sft.rounded_gamma(best, base)
        grafted = sft.graft(pre, ft, region)
        size = int(sum(int(jnp.sum(r)) for r in jax.tree.leaves(region)))
        acc_ft = self.accuracy(ft, ms, "B")
        acc = self.accuracy(grafted, ms, "B")
        rec = {"fraction": fraction, "lr": lr, "base": int(sum(int(jnp.sum(b))
                                                     for b in jax.tree.leaves(base))),
               "base_accuracy": self.accuracy(sft.graft(pre, ft, base), ms, "B"),
               "region": size, "region_fraction": size / self.n, "best_step": best_step,
               "selection_accuracy": best_acc, "accuracy": acc, "finetuned_accuracy": acc_ft,
               "pretrained_accuracy": self.accuracy(pre, ms, "B"),
               "recovered": acc / acc_ft if acc_ft else None}
        self.store.save(f"{name}/scores", best)
        self.store.write_json(f"{name}/metrics.json", rec)
        return rec

    def selected_accuracy(self, base, scores, split) -> float:
        g = sft.graft(self.theta0["params"], self.finetuned["B"]["params"],
                      sft.rounded_gamma(scores, base))
        t = self.plain
        _, acc = t.evaluate(t.init(g, self.theta0["model_state"]),
                            masks.init(g, masks.all_leaves), jnp.asarray(split.x),
                            jnp.asarray(split.y))
        return float(acc)

    # --------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        from lotto_jax.runs import sft_report

        self.store.check_record("driver", {
            "method": "sft", "tasks": {t: sorted({int(v) for v in d.train.y})
                                       for t, d in self.ts.items()},
            "num_train": {t: len(d.train) for t, d in self.ts.items()},
            "num_weights": self.n, "data_key": key_list(self.prep.data_key)})
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
        ms = self.theta0["model_state"]
        pre = self.cached("pretrain/eval.json", lambda: {
            t: self.accuracy(self.theta0["params"], ms, t) for t in self.ts})
        full = {t: self.cached(f"finetune/{t}/eval.json", lambda t=t: {
            "accuracy": self.accuracy(self.finetuned[t]["params"], ms, t),
            "accuracy_A": self.accuracy(self.finetuned[t]["params"], ms, "A")})
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
