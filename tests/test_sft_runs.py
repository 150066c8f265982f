"""``lotto sft`` in the run tooling: ``--replicates``, ``lotto ls``, ``lotto report``,
``--repair``.

Two real runs on the tiny clusters data (tests/_tiny_data.py), made once per
session: ``r2``, two replicates (seeds 0, 1), and ``s1``, the single run with seed
1 and data seed 1. Independent truths: replicate 1 of ``r2`` is ``s1`` (every
weight to float tolerance, selections and φ supports exactly, every number of
its results); the listing and the report are checked against the numbers the run
wrote itself (``results.json`` and its units' ``eval.json``, means and population
stds by numpy); the repaired run is compared item by item with the undamaged one
(:func:`_killrun.assert_same_run`), and each repair plan with the dependency rule
worked out by hand from the layout.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from _killrun import assert_ok, assert_same_run, here, made_once, shared_base
from _tiny_data import clusters_npz

from lotto_jax.runs import layout, ls
from lotto_jax.runs.repair import plan, scan
from lotto_jax.runs.store import RunStore


def _args(npz, out, *extra):
    return ["sft", "--model", "mlp", "--dataset", f"npz:{npz}", "--steps", "20",
            "--eval-every", "10", "--batch-size", "32", "--k", "50",
            "--graft-fractions", "0.01", "--graft-steps", "2", "--graft-batch", "100",
            "--graft-lrs", "1e6", *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = shared_base(tmp_path_factory)
    made_once(base, "sft_npz", lambda d: (d.mkdir(), clusters_npz(d)))
    return base


@pytest.fixture(scope="module")
def npz(base):
    return base / "sft_npz" / "tiny.npz"


@pytest.fixture(scope="module")
def r2(base, npz):
    """Two replicates: seeds 0 and 1."""
    return made_once(base, "sft_r2", lambda d: assert_ok(here(_args(npz, d, "--replicates",
                                                                     "2"))))


@pytest.fixture(scope="module")
def s1(base, npz):
    """The single run with seed 1, data seed 1 (no composition: fewer programs to
    compile; r2's compositions are checked against numpy by the report test)."""
    return made_once(base, "sft_s1", lambda d: assert_ok(here(_args(
        npz, d, "--seed", "1", "--data-seed", "1", "--no-compose"))))


def _results(d):
    return json.loads((d / "results.json").read_text())


# ---------------------------------------------------------------- replicates


def _replicate(value, i, like):
    """Replicate ``i`` of a merged record value (``like``: the single run's)."""
    if isinstance(like, dict):
        return {k: _replicate(value[k], i, v) for k, v in like.items()}
    if np.ndim(value) > np.ndim(like):
        return value[i]
    return value


def test_replicate_one_is_the_single_run_with_seed_one(r2, s1):
    a, b = RunStore(str(r2)), RunStore(str(s1))
    res2, res1 = _results(r2), _results(s1)
    assert res2["replicates"] == 2 and res1["replicates"] == 1
    assert res2["ks"] == res1["ks"] == [50]
    # every number of the single run is replicate 1's (tasks A and B: s1 composes not)
    for key in ("pretrained", "finetuned"):
        got = _replicate(res2[key], 1, res1[key])
        np.testing.assert_allclose(jax.tree.leaves(got), jax.tree.leaves(res1[key]),
                                   atol=1e-6, err_msg=key)
    on_b = [r for r in res2["sparse"] if r["task"] == "B"]
    for many, one in [*zip(on_b, res1["sparse"], strict=True),
                      *zip(res2["graft"], res1["graft"], strict=True)]:
        got = {k: v if k in ("kind", "task", "k", "fraction", "lr") else v[1]
               for k, v in many.items()}
        assert got.keys() == one.keys()
        for k in one:
            if isinstance(one[k], str):
                assert got[k] == one[k], k
            else:
                np.testing.assert_allclose(got[k], one[k], atol=1e-6, err_msg=k)
    # the weights to float tolerance (vmapped vs one network), the selections exactly
    units = ["pretrain", "finetune/B", "ltsft/B/k50", "random/B/k50"]
    for unit in units:
        x, y = jax.tree.leaves(a.restore(f"{unit}/final")), jax.tree.leaves(
            b.restore(f"{unit}/final"))
        assert all(np.shape(u)[0] == 2 for u in x)
        for u, v in zip(x, y, strict=True):
            np.testing.assert_allclose(np.asarray(u)[1], v, atol=2e-5, err_msg=unit)
    for unit in units[2:]:
        for u, v in zip(jax.tree.leaves(a.restore(f"{unit}/mask")),
                        jax.tree.leaves(b.restore(f"{unit}/mask")), strict=True):
            np.testing.assert_array_equal(np.asarray(u)[1], v, err_msg=unit)
        p2, p1 = a.restore(f"{unit}/phi_r1"), b.restore(f"{unit}/phi")
        np.testing.assert_array_equal(p2["indices"], p1["indices"])
        np.testing.assert_allclose(p2["values"], p1["values"], atol=2e-5)
    s2 = a.restore("graft/f0.01/lr1e+06/scores")
    for u, v in zip(jax.tree.leaves(s2), jax.tree.leaves(b.restore(
            "graft/f0.01/lr1e+06/scores")), strict=True):
        np.testing.assert_allclose(np.asarray(u)[1], v, atol=1e-5)
    # the two replicates are different networks
    w = jax.tree.leaves(a.restore("pretrain/final")["params"])[0]
    assert not np.allclose(np.asarray(w)[0], np.asarray(w)[1])


# ----------------------------------------------------------------- ls, report


def _pm(values):
    """Mean ± population std in percent, as the tables print it."""
    a = 100 * np.asarray(values, float)
    return f"{a.mean():.2f} ± {a.std():.2f}"


def test_ls_lists_sft_runs_with_their_best_ltsft_accuracy(r2, s1, tmp_path, capsys):
    top = tmp_path / "runs"
    top.mkdir()
    shutil.copytree(r2, top / "r2")
    shutil.copytree(s1, top / "s1")
    part = top / "part"  # unfinished: no results.json, one grafting to go
    shutil.copytree(s1, part)
    os.remove(part / "results.json")
    shutil.rmtree(part / "graft")
    rows = {os.path.basename(r.path): r for r in ls.main(ls.LsConfig(str(top)))}
    printed = capsys.readouterr().out
    # pretrain, the fine-tunings (r2: B, B1, B2), the sparse units, a grafting
    units = {"r2": 1 + 3 + 4 + 1, "s1": 1 + 1 + 2 + 1}
    for name, d in (("r2", r2), ("s1", s1)):
        res, info, n_units = _results(d), rows[name], units[name]
        assert (info.kind, info.status) == ("sft", "done")
        assert info.progress == f"units {n_units}/{n_units}; A 0-4 -> B 5-9, K 50"
        best = max((r for r in res["sparse"] if r["kind"] == "ltsft" and r["task"] == "B"),
                   key=lambda r: np.mean(r["accuracy"]))
        assert info.accuracy == pytest.approx(np.mean(best["accuracy"]))
        assert info.density == best["fraction"]
        assert re.search(rf"^{name}\s+sft\s+done\s+units {n_units}/{n_units}; .*"
                         rf"{100 * np.mean(best['accuracy']):.2f}% @ "
                         rf"{100 * best['fraction']:.3g}%$", printed, re.M), printed
    info = rows["part"]
    assert (info.kind, info.status) == ("sft", "partial")
    assert info.progress.startswith(f"units 4/{units['s1']}; ")
    assert info.accuracy == rows["s1"].accuracy  # from the units' eval.json
    from _killrun import assert_one_line_error

    assert_one_line_error(here(["report", str(part)]), str(part),
                          "no finished lotto sft results")


def test_report_prints_the_tables_from_results_json(r2, tmp_path, capsys):
    from lotto_jax.runs import report

    res = _results(r2)
    rep = report.main(report.ReportConfig(str(r2), figures=str(tmp_path / "f")))
    out = capsys.readouterr().out
    assert rep.run == res and out.strip() == rep.table.strip()
    assert "(2 replicates: mean ± std)" in out.splitlines()[0]
    assert (f"pretrained on A: acc A {_pm(res['pretrained']['A'])}, acc B "
            f"{_pm(res['pretrained']['B'])}") in out
    for r in res["sparse"]:
        cells = (f"{r['kind']:<8} {r['task']:<4} {r['k']:>8} {100 * r['fraction']:>9.3f} ")
        line = next(ln for ln in out.splitlines() if ln.startswith(cells))
        assert line.endswith(f"{_pm(r['accuracy'])} {_pm(r['accuracy_A'])}")
    for c in res["compose"]:
        own = np.asarray(c["own"])  # replicates x halves
        assert f"{_pm(own[:, 0])} -> {_pm(np.asarray(c['composed'])[:, 0])}" in out
        assert f"B {_pm(c['composed_B'])}; overlap" in out
    (g,) = res["graft"]
    rec = 100 * np.asarray(g["recovered"])
    assert f"{rec.mean():.1f} ± {rec.std():.1f}%" in out
    assert sorted(os.listdir(tmp_path / "f")) == ["graft.png", "sft.png"]
    # a directory of runs: each sft run's own report
    top = tmp_path / "runs"
    top.mkdir()
    shutil.copytree(r2, top / "a")
    reports = report.main(report.ReportConfig(str(top)))
    assert [x.run for x in reports] == [res]


# -------------------------------------------------------------------- repair


def _damage(d, item):
    """Truncates a data file of an item, or garbles a JSON record."""
    path = os.path.join(d, item)
    if item.endswith(".json"):
        with open(path, "w") as f:
            f.write('{"accuracy": 0.')
        return
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                   if os.path.basename(r) == "d")
    with open(files[0], "r+b") as f:
        f.truncate(3)


CASES = [
    # (damaged item, what goes: records first, dependants before their sources)
    ("finetune/B/final", ["results.json", "graft/f0.01/lr1e+06", "ltsft/B/k50",
                          "random/B/k50", "finetune/B"]),
    ("finetune/B2/final", ["results.json", "compose/full.json", "compose/k50.json",
                           "ltsft/B2/k50", "finetune/B2"]),
    ("ltsft/B1/k50/final", ["results.json", "compose/k50.json", "ltsft/B1/k50"]),
    ("ltsft/B/k50/mask", ["results.json", "ltsft/B/k50"]),
    ("pretrain/final", ["results.json", "compose/full.json", "compose/k50.json",
                        "graft/f0.01/lr1e+06", "ltsft/B/k50", "ltsft/B1/k50", "ltsft/B2/k50",
                        "random/B/k50", "finetune/B", "finetune/B1", "finetune/B2",
                        "pretrain"]),
    ("init", ["results.json", "compose/full.json", "compose/k50.json",
              "graft/f0.01/lr1e+06", "ltsft/B/k50", "ltsft/B1/k50", "ltsft/B2/k50",
              "random/B/k50", "finetune/B", "finetune/B1", "finetune/B2", "pretrain",
              "init"]),
    ("graft/f0.01/lr1e+06/scores", ["results.json", "graft/f0.01/lr1e+06"]),
    ("random/B/k50/phi_r0", ["results.json", "random/B/k50/phi_r0"]),
    ("ltsft/B2/k50/eval.json", ["results.json", "ltsft/B2/k50/eval.json"]),
    ("compose/k50.json", ["results.json", "compose/k50.json"]),
    ("driver.json", ["results.json", "driver.json"]),
]


@pytest.mark.parametrize(("item", "expected"), CASES, ids=[c[0] for c in CASES])
def test_repair_plan_discards_what_derives_from_a_damaged_unit(r2, tmp_path, item,
                                                               expected):
    d = tmp_path / "run"
    shutil.copytree(r2, d)
    assert scan(RunStore(str(d))) == []
    _damage(d, item)
    problems = scan(RunStore(str(d)))
    assert [p.item for p in problems] == [item]
    assert [x.name for x in plan(str(d), problems)] == expected


def test_repair_recomputes_a_damaged_finetuning_as_the_undamaged_run(r2, npz, tmp_path):
    """``finetune/B/final`` truncated: without ``--repair`` one error line naming
    the file and ``--repair``; with it the fine-tuning, its sparse units and the
    grafting are recomputed and the run equals the undamaged one, bit for bit."""
    from _killrun import assert_one_line_error

    d = tmp_path / "run"
    shutil.copytree(r2, d)
    _damage(d, "finetune/B/final")
    line = assert_one_line_error(here(_args(npz, d, "--replicates", "2")), "--repair")
    assert str(d / "finetune/B/final") in line
    proc = here(_args(npz, d, "--replicates", "2", "--repair"))
    assert_ok(proc)
    listed = re.findall(r"^  (\S+): ", proc.stdout, re.M)
    assert sorted(listed) == sorted(CASES[0][1])
    assert "lotto: finetune/B: training from step 0" in proc.stderr
    assert "lotto: finetune/B1: finished, kept" in proc.stderr
    assert "lotto: ltsft/B1/k50: finished, kept" in proc.stderr
    assert_same_run(r2, d)
    assert layout.read(str(d)).done and scan(RunStore(str(d))) == []
