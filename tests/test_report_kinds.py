"""The readers over every run kind: ``lotto report`` (pai, supermask, train, an
unfinished run, a directory of runs), ``lotto ls`` over a mixed directory, and the
repair plan of each corruption case of each kind.

The runs are written by hand (tests/_handruns.py: real orbax items with
manifests, tiny arrays, metrics chosen by hand); the expected tables are worked out
here by hand from those numbers (two replicates a, b: mean (a+b)/2, population std
|a-b|/2), and the figures are read back from their matplotlib artists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from _handruns import data_file, templates

from lotto_jax.runs import layout, ls, report, report_kinds, sweeps
from lotto_jax.runs.cli import run as cli_run
from lotto_jax.runs.repair import plan, repair, scan
from lotto_jax.runs.store import RunStore

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return templates(str(tmp_path_factory.mktemp("handruns")))


def copy(runs, name, tmp_path, as_name=None):
    d = tmp_path / (as_name or name)
    shutil.copytree(runs[name], d)
    return str(d)


def lines_of(fig):
    ax = fig.axes[0]
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()))
            for ln in ax.get_lines()}


def band_limits(ax, label):
    """(low, high) at each x of the fill_between band drawn in the line's colour."""
    import matplotlib.colors as mc

    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    (band,) = [c for c in ax.collections
               if tuple(c.get_facecolor()[0][:3]) == mc.to_rgb(line.get_color())]
    out = {}
    for x, y in band.get_paths()[0].vertices:
        lo, hi = out.get(round(x, 6), (np.inf, -np.inf))
        out[round(x, 6)] = (min(lo, y), max(hi, y))
    return [out[x] for x in sorted(out)]


# ------------------------------------------------------------------ report


def test_pai_report_table_and_curves(runs, tmp_path, capsys):
    d = copy(runs, "pai", tmp_path)
    rep = cli_run(["report", d, "--figures", str(tmp_path / "fig")])
    assert rep.run.kind == "pai"
    header, rows = report_kinds.table(rep.run)
    assert header == ["variant", "status", "% weights", "final acc", "ES step", "acc @ ES",
                      "best acc", "collapsed layers"]
    # snip: final (0.80, 0.90), best (0.80, 0.95), ES steps (10, 20) at (0.50, 0.90)
    assert rows == [
        ["snip", "done", "10.00", "85.00 ± 5.00", "15 ± 5", "70.00 ± 20.00",
         "87.50 ± 7.50", "none"],
        ["shuffle", "done", "10.00", "50.00 ± 10.00", "-", "-", "50.00 ± 10.00",
         "Dense_1/kernel"],
        ["reinit", "done", "10.00", "75.00 ± 5.00", "-", "-", "75.00 ± 5.00", "none"],
    ]
    out = capsys.readouterr().out
    assert "PaI: snip at 10% (global) on mlp / npz:tiny.npz (2 replicates" in out
    assert "unfinished" not in out and "87.50 ± 7.50" in out
    assert [os.path.basename(p) for p in rep.figures] == ["curves.png"]
    assert open(rep.figures[0], "rb").read(8) == PNG
    fig = report_kinds.curves_figure(rep.run)
    lines = lines_of(fig)
    assert sorted(lines) == ["reinit", "shuffle", "snip"]
    assert lines["snip"][0] == [0, 10, 20]
    np.testing.assert_allclose(lines["snip"][1], [15, 72.5, 85])
    np.testing.assert_allclose(lines["shuffle"][1], [10, 35, 50])
    np.testing.assert_allclose(band_limits(fig.axes[0], "snip"),
                               [(10, 20), (50, 95), (80, 90)], atol=1e-9)


def test_unfinished_pai_report_marks_how_far_it_got(runs, tmp_path):
    d = copy(runs, "pai_unfinished", tmp_path)
    rep = report.main(report.ReportConfig(dir=d, figures=str(tmp_path / "fig")))
    _, rows = report_kinds.table(rep.run)
    assert [r[:2] for r in rows] == [["snip", "done"], ["shuffle", "training 10/20"],
                                     ["reinit", "training 10/20"]]
    assert rows[0][3] == "85.00 ± 5.00"
    assert rows[1][2:] == ["-"] * 6 and rows[2][2:] == ["-"] * 6
    assert "[unfinished: 1/3 units done]" in rep.table
    lines = lines_of(report_kinds.curves_figure(rep.run))
    # the curves so far, from the step-10 checkpoints' manifests
    assert lines["shuffle (training 10/20)"][0] == [0, 10]
    np.testing.assert_allclose(lines["reinit (training 10/20)"][1], [10, 60])
    np.testing.assert_allclose(lines["snip"][1], [15, 72.5, 85])


def test_supermask_and_train_reports(runs, tmp_path):
    d = copy(runs, "supermask", tmp_path)
    rep = cli_run(["report", d, "--figures", str(tmp_path / "sm")])
    header, rows = report_kinds.table(rep.run)
    assert header[-3:] == ["exported acc", "no search", "shuffled mask"]
    assert rows == [["edge-popup", "done", "50.00", "60.00", "-", "-", "62.00",
                     "58.00", "10.00", "20.00"]]
    assert "supermask: edge-popup, keep 50%" in rep.table
    lines = lines_of(report_kinds.curves_figure(rep.run))
    assert list(lines) == ["edge-popup"]
    np.testing.assert_allclose(lines["edge-popup"][1], [10, 62, 60])
    assert not report_kinds.curves_figure(rep.run).axes[0].collections  # no replicates

    d = copy(runs, "train", tmp_path)
    rep = cli_run(["report", d, "--figures", str(tmp_path / "tr")])
    assert report_kinds.table(rep.run)[1] == [
        ["lenet", "done", "100.00", "90.00", "10", "92.00", "92.00"]]
    np.testing.assert_allclose(lines_of(report_kinds.curves_figure(rep.run))["lenet"][1],
                               [10, 92, 90])
    assert open(rep.figures[0], "rb").read(8) == PNG


def test_unfinished_imp_report_says_what_is_left(runs, tmp_path, capsys):
    d = copy(runs, "imp", tmp_path)
    os.remove(os.path.join(d, "controls", "reinit", "round_001", "metrics.json"))
    rep = report.main(report.ReportConfig(dir=d, figures=str(tmp_path / "fig")))
    assert [r[1] for r in report.table(rep.run)[1]] == ["100.00", "80.00"]
    out = capsys.readouterr().out
    assert "unfinished: 3/4 units done (1 to go; training: controls/reinit/round_001" in out


def test_report_of_a_directory_of_runs(runs, tmp_path):
    top = tmp_path / "sweep"
    for name in runs:
        copy(runs, name, top, f"group/{name}" if name == "imp" else name)
    (top / "notes").mkdir()
    rep = cli_run(["report", str(top), "--figures", str(tmp_path / "fig")])
    assert isinstance(rep, sweeps.SweepReport)
    assert sorted((os.path.relpath(r.path, top), r.kind, r.status) for r in rep.runs) == [
        ("group/imp", "imp", "done"), ("pai", "pai", "done"),
        ("pai_unfinished", "pai", "partial"), ("supermask", "supermask", "done"),
        ("train", "train", "done")]
    assert [t[0] for t in rep.tables] == ["pruning at initialisation", "supermask search",
                                          "IMP and train runs"]
    (_, h_pai, r_pai), (_, _, r_sm), (_, _, r_other) = rep.tables
    assert h_pai == ["method", "% weights", "final test accuracy", "reinit", "shuffle",
                     "collapsed layers"]
    assert sorted(r_pai) == [
        ["snip", "10", "85.00 ± 5.00", "75.00 ± 5.00", "50.00 ± 10.00", "-"],
        ["snip (unfinished)", "10", "85.00 ± 5.00", "-", "-", "-"]]
    assert r_sm == [["edge-popup (signed-constant)", "50", "60.00", "62.00", "10.00"]]
    assert r_other == [["group/imp", "imp", "done: 2 rounds", "80", "88.00", "88.00"],
                       ["train", "train", "done", "100", "90.00", "92.00"]]
    assert sorted(os.path.basename(p) for p in rep.figures) == [
        "imp_lottery.png", "pai_accuracy.png", "pai_sanity_checks.png",
        "supermask_accuracy.png"]
    for p in rep.figures:
        assert open(p, "rb").read(8) == PNG


def test_report_of_an_empty_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runs under"):
        report.main(report.ReportConfig(dir=str(tmp_path)))


def test_kind_of_every_layout(runs):
    assert {n: layout.run_kind(p) for n, p in runs.items()} == {
        "pai": "pai", "pai_unfinished": "pai", "supermask": "supermask", "train": "train",
        "imp": "imp"}
    # without a config: from the layout
    assert layout.kind_of(None, runs["pai"]) == "pai"
    assert layout.kind_of({}, runs["imp"]) == "imp"
    assert layout.kind_of({}, runs["supermask"]) == "supermask"


# ------------------------------------------------------------------ lotto ls


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_ls_over_a_mixed_directory(runs, tmp_path, capsys):
    top = tmp_path / "runs"
    for name in runs:
        copy(runs, name, top)
    host = socket.gethostname()
    live, dead = os.getppid(), dead_pid()  # a live process that is not this one
    with open(top / "pai_unfinished" / ".lock", "w") as f:
        json.dump({"pid": live, "host": host, "started": "t0"}, f)
    with open(top / "supermask" / ".lock", "w") as f:
        json.dump({"pid": dead, "host": host, "started": "t1"}, f)
    broken = copy(runs, "train", tmp_path, "runs/train_corrupt")
    victim = data_file(os.path.join(broken, "train", "final"))
    with open(victim, "r+b") as f:
        f.truncate(3)

    infos = ls.main(ls.LsConfig(dir=str(top)))
    out = capsys.readouterr().out
    by = {os.path.basename(i.path): i for i in infos}
    assert sorted(by) == ["imp", "pai", "pai_unfinished", "supermask", "train",
                          "train_corrupt"]
    got = {k: (i.kind, i.status, i.progress) for k, i in by.items()}
    assert got == {
        "imp": ("imp", "done", "rounds 1/1, controls 2/2"),
        "pai": ("pai", "done", "units 3/3"),
        "pai_unfinished": ("pai", "partial", "units 1/3, step 10/20"),
        "supermask": ("supermask", "done", "units 1/1"),
        "train": ("train", "done", "units 1/1"),
        "train_corrupt": ("train", "corrupt", "units 1/1"),
    }
    # best accuracies: mean of the replicates' best (0.80, 0.95) for snip
    assert by["pai"].accuracy == pytest.approx(0.875) and by["pai"].density == 0.1
    assert by["pai_unfinished"].accuracy == pytest.approx(0.875)
    assert (by["imp"].accuracy, by["imp"].density) == (0.88, 0.8)
    assert (by["supermask"].accuracy, by["supermask"].density) == (0.62, 0.5)
    assert (by["train"].accuracy, by["train"].density) == (0.92, 1.0)
    assert by["pai_unfinished"].note == f"running: pid {live} on host {host} (since t0)"
    assert by["supermask"].note == f"stale lock: pid {dead} on host {host} (since t1), exited"
    rows = {line.split()[0]: line for line in out.splitlines()[1:7]}
    assert "87.50% @ 10%" in rows["pai"] and "62.00% @ 50%" in rows["supermask"]
    assert rows["pai_unfinished"].endswith(f"running: pid {live} on host {host} (since t0)")
    (tail,) = [ln for ln in out.splitlines() if ln.startswith("train_corrupt: corrupt")]
    assert "lotto train command with --repair" in tail and victim in tail


# ------------------------------------------------------------------ repair


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(3)


def _corrupt(d, item):
    """Garbles a JSON record, truncates a data file of an item, or (``-item``)
    deletes an item of a finished unit."""
    if item.startswith("-"):
        shutil.rmtree(os.path.join(d, item[1:]))
        os.remove(os.path.join(d, item[1:] + ".manifest.json"))
    elif item.endswith(".json"):
        with open(os.path.join(d, item), "w") as f:
            f.write('{"final_test_accuracy": 0.')
    else:
        _truncate(data_file(os.path.join(d, item)))


EXPORTS = ["export/mask", "export/scores", "export/weights"]
CASES = [
    # (run, corrupt item, discarded in deletion order)
    ("pai", "variants/snip/mask", ["results.json", "variants/snip"]),
    ("pai", "variants/shuffle/final", ["results.json", "variants/reinit", "variants/shuffle"]),
    ("pai", "init", ["results.json", "variants/reinit", "variants/shuffle", "variants/snip",
                     "init"]),
    ("pai", "variants/snip/metrics.json", ["results.json", "variants/snip/metrics.json"]),
    ("pai", "results.json", ["results.json"]),
    ("pai_unfinished", "variants/shuffle/checkpoints/step_00000010",
     ["variants/reinit/checkpoints/step_00000010",
      "variants/shuffle/checkpoints/step_00000010"]),
    ("supermask", "export/scores", ["results.json", "export/scores"]),
    ("supermask", "search/final", ["results.json", *EXPORTS, "search"]),
    ("train", "mask", ["results.json", "train", "mask"]),
    ("train", "-train/final", ["results.json", "train"]),
    ("imp", "controls/random/round_001/final",
     ["controls/random/round_001", "controls/reinit/round_001"]),
    ("imp", "round_001/mask",
     ["controls/random/round_001", "controls/reinit/round_001", "round_001"]),
]


@pytest.mark.parametrize(("name", "item", "expected"), CASES,
                         ids=[f"{n}:{i}" for n, i, _ in CASES])
def test_repair_plan_of_each_corruption(runs, tmp_path, name, item, expected):
    d = copy(runs, name, tmp_path)
    assert scan(RunStore(d)) == []
    _corrupt(d, item)
    problems = scan(RunStore(d))
    assert [p.item for p in problems] == [item.lstrip("-")]
    assert [x.name for x in plan(d, problems)] == expected


def test_repair_lists_then_discards_and_leaves_a_clean_store(runs, tmp_path):
    d = copy(runs, "pai", tmp_path)
    _corrupt(d, "init")
    listed = []
    with RunStore.open(d) as store:
        done = repair(store, echo=listed.append)
    assert listed[0].startswith(f"repair: {os.path.abspath(d)}: discarding 5 ")
    assert listed[1].startswith("  init: corrupt: ") and listed[1].endswith(
        "every unit depends on it: all 3 units are recomputed")
    assert [ln.split(":")[0].strip() for ln in listed[2:]] == [
        "variants/snip", "variants/shuffle", "variants/reinit", "results.json"]
    assert all("depends on init (corrupt)" in ln for ln in listed[2:5])
    assert [x.name for x in done][::-1] == [ln.split(":")[0].strip() for ln in listed[1:]]
    assert sorted(os.listdir(d)) == ["config.json", "variants"]
    assert os.listdir(os.path.join(d, "variants")) == []
    assert scan(RunStore(d)) == []


def test_repair_of_a_garbled_marker_keeps_the_final(runs, tmp_path):
    d = copy(runs, "pai", tmp_path)
    _corrupt(d, "variants/snip/metrics.json")
    with RunStore.open(d) as store:
        (results, marker) = repair(store, echo=None)
    assert results.name == "results.json" and marker.name == "variants/snip/metrics.json"
    assert "completed again from it" in marker.reason
    assert not os.path.exists(os.path.join(d, "results.json"))
    assert not os.path.exists(os.path.join(d, "variants/snip/metrics.json"))
    assert RunStore(d).has("variants/snip/final") and RunStore(d).has("variants/snip/mask")
    view = layout.read(d)
    assert view.units["variants/snip"].status == "training"  # its final awaits the marker
    assert [view.units[f"variants/{v}"].status for v in ("shuffle", "reinit")] == ["done"] * 2


# ------------------------------------------------------------------ dst runs
# Hand-written lotto dst runs (tests/_handruns.py DST_BUILDERS), two replicates:
# rigl at 10 % final (0.80, 0.90), at 5 % (0.70, 0.74), static at 10 % (0.60, 0.70),
# rigl at 2 % killed after its step-10 checkpoint (curve so far (0.1, 0.1), (0.3, 0.5)).


@pytest.fixture(scope="module")
def dst_runs(tmp_path_factory):
    from _handruns import DST_BUILDERS

    return templates(str(tmp_path_factory.mktemp("dst_handruns")), DST_BUILDERS)


def test_dst_report_table_curves_and_schedule(dst_runs, tmp_path, capsys):
    d = copy(dst_runs, "rigl_d0.1", tmp_path)
    rep = cli_run(["report", d, "--figures", str(tmp_path / "fig")])
    assert rep.run.kind == "dst"
    header, rows = report_kinds.table(rep.run)
    assert header == ["method", "status", "% weights", "final acc", "ES step", "acc @ ES",
                      "best acc", "target %", "updates"]
    assert rows == [["rigl", "done", "10.00", "85.00 ± 5.00", "-", "-", "85.00 ± 5.00",
                     "10.00", "2"]]
    out = capsys.readouterr().out
    assert "DST: rigl at 10% (erk, update every 10) on mlp / npz:tiny.npz (2 replicates" in out
    assert [os.path.basename(p) for p in rep.figures] == ["curves.png", "schedule.png"]
    for p in rep.figures:
        assert open(p, "rb").read(8) == PNG
    fig = report_kinds.curves_figure(rep.run)
    ((label, (x, y)),) = lines_of(fig).items()
    assert label == "rigl" and x == [0, 10, 20]
    np.testing.assert_allclose(y, [10, 65, 85])
    np.testing.assert_allclose(band_limits(fig.axes[0], "rigl"),
                               [(10, 10), (60, 70), (80, 90)], atol=1e-9)
    top, bottom = report_kinds.schedule_figure(rep.run).axes
    ((steps, density),) = [(list(ln.get_xdata()), list(ln.get_ydata()))
                           for ln in top.get_lines()]
    ((steps2, drop),) = [(list(ln.get_xdata()), list(ln.get_ydata()))
                         for ln in bottom.get_lines()]
    assert steps == steps2 == [10, 20]
    np.testing.assert_allclose(density, [10.0, 10.0])  # percent
    np.testing.assert_allclose(drop, [0.3, 0.15])
    # a static run makes no update: no schedule figure
    rep = cli_run(["report", copy(dst_runs, "static_d0.1", tmp_path),
                   "--figures", str(tmp_path / "fig_static")])
    assert report_kinds.table(rep.run)[1][0][-1] == "0"
    assert [os.path.basename(p) for p in rep.figures] == ["curves.png"]


def test_unfinished_dst_report_marks_how_far_it_got(dst_runs, tmp_path):
    d = copy(dst_runs, "rigl_d0.02", tmp_path)
    rep = report.main(report.ReportConfig(dir=d, figures=str(tmp_path / "fig")))
    assert report_kinds.table(rep.run)[1] == [["rigl", "training 10/20", *["-"] * 7]]
    assert "DST: rigl at 2%" in rep.table and "[unfinished: 0/1 units done]" in rep.table
    assert [os.path.basename(p) for p in rep.figures] == ["curves.png"]
    ((label, (x, y)),) = lines_of(report_kinds.curves_figure(rep.run)).items()
    assert label == "rigl (training 10/20)" and x == [0, 10]
    np.testing.assert_allclose(y, [10, 40])


def test_kind_of_dst_runs_is_not_pai(dst_runs):
    from _handruns import PAI_CONFIG, dst_config

    assert {layout.run_kind(p) for p in dst_runs.values()} == {"dst"}
    assert layout.kind_of(dst_config("rigl", 0.1), "/nowhere") == "dst"
    assert layout.kind_of(PAI_CONFIG, "/nowhere") == "pai"  # method and density too
    assert layout.kind_of({}, dst_runs["rigl_d0.02"]) == "dst"  # from the layout
    assert layout.kind_of({}, dst_runs["rigl_d0.1"]) == "dst"


def test_report_of_a_sweep_of_dst_and_pai_runs(runs, dst_runs, tmp_path):
    """As experiments/dst_compare.sh lays it out: dst runs per method and density
    beside a PaI run. Tables and the accuracy-vs-density lines by hand: mean of
    the two replicates' final accuracies, population std |a - b| / 2."""
    top = tmp_path / "sweep"
    for name in dst_runs:
        copy(dst_runs, name, top)
    copy(runs, "pai", top, "snip_d0.1")
    rep = cli_run(["report", str(top), "--figures", str(tmp_path / "fig")])
    assert [t[0] for t in rep.tables] == ["pruning at initialisation",
                                          "dynamic sparse training"]
    _, header, rows = rep.tables[1]
    assert header == ["method", "% weights", "final test accuracy", "best", "final mask %",
                      "updates"]
    assert rows == [
        ["rigl", "10", "85.00 ± 5.00", "85.00 ± 5.00", "10.00", "2"],
        ["rigl", "5", "72.00 ± 2.00", "72.00 ± 2.00", "5.00", "2"],
        ["rigl (unfinished)", "2", "-", "-", "-", "-"],
        ["static", "10", "65.00 ± 5.00", "65.00 ± 5.00", "10.00", "0"],
    ]
    assert sorted(os.path.basename(p) for p in rep.figures) == [
        "dst_accuracy.png", "pai_accuracy.png", "pai_sanity_checks.png"]
    for p in rep.figures:
        assert open(p, "rb").read(8) == PNG
    series = sweeps.dst_series(rep.runs)
    assert list(series) == ["rigl", "static", "snip (at init)"]  # no point at 2 %: unfinished
    want = {"rigl": ([5, 10], [72, 85], [2, 5]), "static": ([10], [65], [5]),
            "snip (at init)": ([10], [85], [5])}
    for label, (x, mean, std) in want.items():
        for got, expected in zip(series[label], (x, mean, std), strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-9, err_msg=label)


def test_ls_over_a_mixed_directory_with_dst_runs(runs, dst_runs, tmp_path, capsys):
    top = tmp_path / "runs"
    for name in runs:
        copy(runs, name, top)
    for name in ("rigl_d0.1", "rigl_d0.02"):
        copy(dst_runs, name, top)
    infos = ls.main(ls.LsConfig(dir=str(top)))
    out = capsys.readouterr().out
    by = {os.path.basename(i.path): i for i in infos}
    assert {k: i.kind for k, i in by.items()} == {
        "imp": "imp", "pai": "pai", "pai_unfinished": "pai", "supermask": "supermask",
        "train": "train", "rigl_d0.1": "dst", "rigl_d0.02": "dst"}
    done, partial = by["rigl_d0.1"], by["rigl_d0.02"]
    assert (done.status, done.progress, done.accuracy, done.density) == (
        "done", "units 1/1", pytest.approx(0.85), 0.1)  # mean best of (0.80, 0.90)
    assert (partial.status, partial.progress, partial.accuracy, partial.density) == (
        "partial", "units 0/1, step 10/20", None, 0.02)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["rigl_d0.1"][:5] == ["rigl_d0.1", "dst", "done", "units", "1/1"]
    assert "85.00%" in rows["rigl_d0.1"] and "10%" in rows["rigl_d0.1"]
    assert rows["rigl_d0.02"][1:3] == ["dst", "partial"]


DST_CASES = [
    # (run, corrupt item, discarded in deletion order)
    ("rigl_d0.1", "start_mask", ["results.json", "dst", "start_mask"]),
    ("rigl_d0.1", "init", ["results.json", "dst", "init"]),
    ("rigl_d0.1", "dst/final", ["results.json", "dst"]),
    ("rigl_d0.1", "-dst/final", ["results.json", "dst"]),
    ("rigl_d0.1", "dst/metrics.json", ["results.json", "dst/metrics.json"]),
    ("rigl_d0.1", "results.json", ["results.json"]),
    ("rigl_d0.02", "dst/checkpoints/step_00000010", ["dst/checkpoints/step_00000010"]),
]


@pytest.mark.parametrize(("name", "item", "expected"), DST_CASES,
                         ids=[f"{n}:{i}" for n, i, _ in DST_CASES])
def test_repair_plan_of_each_dst_corruption(dst_runs, tmp_path, name, item, expected):
    """The start mask is every unit's start, as a run-level init is."""
    d = copy(dst_runs, name, tmp_path)
    assert scan(RunStore(d)) == []
    _corrupt(d, item)
    problems = scan(RunStore(d))
    assert [p.item for p in problems] == [item.lstrip("-")]
    assert [x.name for x in plan(d, problems)] == expected
