"""Tests for lotto_jax.runs.report and lotto_jax.runs.plots, on a tiny run made by imp_run.main.

The run: the MNIST-1D MLP (40-500-500-10), 20 steps per round, 2 rounds at 20 %
per layer and 10 % for the output layer, with the random control. The densities in
the table are checked against counts worked out here by integer arithmetic.
"""

import json
import os
import shutil

import pytest
from _killrun import made_once, shared_base

from lotto_jax import train
from lotto_jax.runs import common, plots, report
from lotto_jax.runs import imp as imp_run
from lotto_jax.runs.cli import run as cli_run
from lotto_jax.runs.store import ConfigMismatchError

PNG = b"\x89PNG\r\n\x1a\n"
# MNIST1DMLP kernels: 40x500, 500x500, 500x10 (biases are not pruned)
KERNELS = {"Dense_0/kernel": 40 * 500, "Dense_1/kernel": 500 * 500, "output/kernel": 500 * 10}


def config(out, **train_kw):
    return imp_run.ImpConfig(
        run=common.RunConfig(
            model="mnist1d_mlp", dataset="mnist1d", validation=1000,
            train=train.TrainConfig(steps=20, eval_every=10, batch_size=50,
                                    lr=1e-3, **train_kw),
        ),
        rounds=2, controls=("random",), out=out,
    )


def stored_metrics(out, unit):
    with open(os.path.join(out, unit, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(config, the stored metrics.json of rounds 0-2, of the random control's
    rounds 1-2)`` of the run, made once for the session's workers (tests read it;
    the report's figures go elsewhere)."""
    d = made_once(shared_base(tmp_path_factory), "report_imp",
                  lambda d: imp_run.main(config(str(d))))
    cfg = config(str(d))
    return (cfg, [stored_metrics(cfg.out, f"round_{r:03d}") for r in range(3)],
            [stored_metrics(cfg.out, f"controls/random/round_{r:03d}") for r in (1, 2)])


def hand_densities(rounds):
    kept, out = dict(KERNELS), []
    for _ in range(rounds + 1):
        out.append(100 * sum(kept.values()) / sum(KERNELS.values()))
        kept = {k: v - (2 * v + (10 if k.startswith("output") else 5))
                // (20 if k.startswith("output") else 10) for k, v in kept.items()}
    return out


def test_hand_densities_are_what_we_think():
    # 20000+250000+5000 -> 16000+200000+4500 -> 12800+160000+4050
    assert hand_densities(2) == [100.0, 100 * 220500 / 275000, 100 * 176850 / 275000]


def test_table_and_figures(finished, tmp_path):
    cfg, rounds, controls = finished
    rep = report.main(report.ReportConfig(dir=cfg.out, figures=str(tmp_path / "fig")))
    header, rows = report.table(rep.run)
    assert header[:6] == ["round", "% weights", "final acc", "ES step", "acc @ ES", "best acc"]
    assert header[6:] == ["random final", "random best"]
    expected = hand_densities(2)
    assert [row[1] for row in rows] == [f"{d:.2f}" for d in expected]
    assert [row[1] for row in rows] == ["100.00", "80.18", "64.31"]
    for r, row in enumerate(rows):
        m = rounds[r]
        assert row[2] == f"{100 * m['final_test_accuracy']:.2f}"
        assert row[3] == str(m["early_stop_step"])
        assert row[5] == f"{100 * m['best_test_accuracy']:.2f}"
        if r == 0:
            assert row[6:] == ["-", "-"]
        else:
            c = controls[r - 1]
            assert row[6] == f"{100 * c['final_test_accuracy']:.2f}"
    for line in (" 80.18 ", " 64.31 "):
        assert line in rep.table
    names = sorted(os.path.basename(p) for p in rep.figures)
    assert names == ["accuracy.png", "best_accuracy.png", "curves.png",
                     "early_stop.png", "early_stop_accuracy.png", "lottery.png"]
    for path in rep.figures:
        with open(path, "rb") as f:
            blob = f.read()
        assert blob[:8] == PNG and len(blob) > 10_000, path


def test_config_json_and_refusal(finished, tmp_path):
    cfg, _, _ = finished
    with open(os.path.join(cfg.out, "config.json")) as f:
        assert json.load(f) == common.config_to_dict(cfg)
    changed = config(cfg.out, momentum=0.5)
    with pytest.raises(ConfigMismatchError, match=r"run\.train\.momentum: 0\.9 -> 0\.5"):
        imp_run.main(changed)
    # the CLI reaches the same drivers; the report command takes the directory
    with pytest.raises(ConfigMismatchError, match=r"fraction: 0\.2 -> 0\.3"):
        cli_run(["imp", "--out", cfg.out, "--fraction", "0.3", "--steps", "20",
                 "--eval-every", "10", "--batch-size", "50", "--lr", "1e-3",
                 "--validation", "1000", "--rounds", "2", "--controls", "random"])
    rep = cli_run(["report", cfg.out, "--figures", str(tmp_path / "fig")])
    assert len(rep.run.rounds) == 3


def test_replicates_show_mean_and_std(finished, tmp_path):
    cfg, _, _ = finished
    d = str(tmp_path / "replicated")
    shutil.copytree(cfg.out, d, ignore=shutil.ignore_patterns("figures"))
    path = os.path.join(d, "round_001", "metrics.json")
    with open(path) as f:
        m = json.load(f)
    m["final_test_accuracy"] = [0.5, 0.6]
    m["early_stop_step"] = [10, 20]
    for rec in m["curve"]:
        rec["test_accuracy"] = [rec["test_accuracy"], rec["test_accuracy"] + 0.1]
    with open(path, "w") as f:
        json.dump(m, f)
    run = report.load_run(d)
    _, rows = report.table(run)
    assert rows[1][2] == "55.00 ± 5.00"
    assert rows[1][3] == "15 ± 5"
    paths = report.figures(run, os.path.join(d, "figures"))
    assert all(open(p, "rb").read()[:8] == PNG for p in paths)


def _band_limits(collection):
    """(low, high) of a fill_between band at each x, from its polygon's vertices."""
    import numpy as np

    verts = collection.get_paths()[0].vertices
    out = {}
    for x, y in verts:
        lo, hi = out.get(round(x, 6), (np.inf, -np.inf))
        out[round(x, 6)] = (min(lo, y), max(hi, y))
    return [out[x] for x in sorted(out, reverse=True)]


def _band_label(ax, collection):
    """The label of the line whose colour the band shares."""
    import matplotlib.colors as mc

    for line in ax.get_lines():
        if mc.to_rgb(line.get_color()) == tuple(collection.get_facecolor()[0][:3]):
            return line.get_label()
    return None


def test_lottery_figure_from_hand_values():
    """The headline figure of a hand-written run: log x axis at the densities, the
    ticket's and the control's mean lines and ±std bands, the dense level."""
    import numpy as np

    rounds = [
        {"round": 0, "density": 1.0, "best_test_accuracy": [0.60, 0.80]},
        {"round": 1, "density": 0.5, "best_test_accuracy": [0.70, 0.80]},
        {"round": 2, "density": 0.1, "best_test_accuracy": [0.78, 0.82]},
    ]
    random = [
        {"round": 1, "density": 0.5, "best_test_accuracy": [0.62, 0.66]},
        {"round": 2, "density": 0.1, "best_test_accuracy": [0.20, 0.40]},
    ]
    run = report.RunData("/x", {"run": {"model": "m", "dataset": "d", "replicates": 2}},
                         rounds, {"random": random})
    fig = report.lottery_figure(run)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # reversed: sparsity grows to the right
    assert "2 replicates" in ax.get_title()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["IMP ticket"].get_xdata(), [100, 50, 10])
    np.testing.assert_allclose(lines["IMP ticket"].get_ydata(), [70, 75, 80])
    np.testing.assert_allclose(lines["random"].get_xdata(), [50, 10])
    np.testing.assert_allclose(lines["random"].get_ydata(), [64, 30])
    np.testing.assert_allclose(lines["dense"].get_ydata(), [70, 70])  # mean of round 0
    bands = {_band_label(ax, c): c for c in ax.collections}
    np.testing.assert_allclose(_band_limits(bands["IMP ticket"]),
                               [(60, 80), (70, 80), (78, 82)], atol=1e-9)
    np.testing.assert_allclose(_band_limits(bands["random"]), [(62, 66), (20, 40)],
                               atol=1e-9)
    (span,) = [p for p in ax.patches if p.get_alpha() == 0.12]  # the dense ±std span
    ys = span.get_path().transformed(span.get_patch_transform()).vertices[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((60, 80))


def test_plots_band_and_errors(tmp_path):
    x, y = [100.0, 80.0, 64.0], [0.9, 0.8, 0.7]
    plain = plots.accuracy_vs_density({"a": (x, y, None)}, str(tmp_path / "a.png"))
    band = plots.accuracy_vs_density({"a": (x, y, [0.05, 0.05, 0.05])}, str(tmp_path / "b.png"))
    assert open(plain, "rb").read() != open(band, "rb").read()
    with pytest.raises(ValueError, match=r"series\['bad'\]: x has shape \(3,\)"):
        plots.curves({"bad": (x, [1.0], None)}, str(tmp_path / "c.png"))
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.early_stop_vs_density({}, str(tmp_path / "d.png"))
    with pytest.raises(FileNotFoundError, match="no finished round"):
        report.load_run(str(tmp_path))


# A real replicated run (lotto imp with 2 replicates, end to end: per-replicate lists
# in metrics.json, mean ± std in the table, ±std bands in the figures) is the README's
# main job: tests/test_resume_imp.py::test_readme_main_job_cut_down_then_report.


def test_every_imp_figure_from_hand_values():
    """Each figure of figure_set, read back from its artists: the means of two
    replicates (a+b)/2 and bands [min, max] (mean ± |a-b|/2), worked out here."""
    import numpy as np

    def curve(*accs):
        return [{"step": 10 * i, "test_accuracy": a} for i, a in enumerate(accs)]

    rounds = [
        {"round": 0, "density": 1.0, "final_test_accuracy": [0.6, 0.8],
         "best_test_accuracy": [0.7, 0.8], "early_stop_step": [10, 20],
         "early_stop_test_accuracy": [0.65, 0.75], "curve": curve([0.1, 0.1], [0.6, 0.8])},
        {"round": 1, "density": 0.5, "final_test_accuracy": [0.7, 0.7],
         "best_test_accuracy": [0.75, 0.85], "early_stop_step": [20, 20],
         "early_stop_test_accuracy": [0.7, 0.8], "curve": curve([0.2, 0.1], [0.7, 0.7])},
    ]
    random = [{"round": 1, "density": 0.5, "final_test_accuracy": [0.4, 0.6],
               "best_test_accuracy": [0.5, 0.6], "early_stop_step": [10, 10],
               "early_stop_test_accuracy": [0.4, 0.5], "curve": curve([0.1, 0.1])}]
    run = report.RunData("/x", {"run": {"replicates": 2}}, rounds, {"random": random})
    figs = report.figure_set(run)
    assert list(figs) == ["lottery.png", "accuracy.png", "best_accuracy.png",
                          "early_stop_accuracy.png", "early_stop.png", "curves.png"]

    def lines(name):
        return {ln.get_label(): (np.asarray(ln.get_xdata(), float).tolist(),
                                 np.asarray(ln.get_ydata(), float).tolist())
                for ln in figs[name].axes[0].get_lines()}

    expected = {  # name: (ticket y, random y, dense level or None)
        "accuracy.png": ([70, 70], [50], 70),
        "best_accuracy.png": ([75, 80], [55], 75),
        "lottery.png": ([75, 80], [55], 75),
        "early_stop_accuracy.png": ([70, 75], [45], 70),
        "early_stop.png": ([15, 20], [10], None),
    }
    for name, (ticket, rnd, dense) in expected.items():
        got = lines(name)
        assert got["IMP ticket"][0] == [100, 50] and got["random"][0] == [50], name
        np.testing.assert_allclose(got["IMP ticket"][1], ticket, err_msg=name)
        np.testing.assert_allclose(got["random"][1], rnd, err_msg=name)
        if dense is None:
            assert "dense" not in got, name
        else:
            np.testing.assert_allclose(got["dense"][1], [dense, dense], err_msg=name)
    ax = figs["accuracy.png"].axes[0]
    bands = {_band_label(ax, c): c for c in ax.collections}
    np.testing.assert_allclose(_band_limits(bands["IMP ticket"]), [(60, 80), (70, 70)],
                               atol=1e-9)
    assert figs["early_stop.png"].axes[0].get_ylabel() == "Early-stop iteration"
    curves = lines("curves.png")
    assert sorted(curves) == ["100.0%", "50.0%"]
    for label, y in (("100.0%", [10, 70]), ("50.0%", [15, 70])):
        assert curves[label][0] == [0, 10]
        np.testing.assert_allclose(curves[label][1], y)
    ax = figs["curves.png"].axes[0]
    bands = {_band_label(ax, c): c for c in ax.collections}
    np.testing.assert_allclose(sorted(_band_limits(bands["100.0%"])), [(10, 10), (60, 80)],
                               atol=1e-9)
