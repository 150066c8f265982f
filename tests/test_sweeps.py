"""lotto_jax.runs.sweeps: tables and figures over directories of PaI / supermask runs."""

import json

import pytest

from lotto_jax.runs import sweeps


def _write(path, results):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))


def _pai(method, density, acc, **controls):
    variants = {method: {"final_test_accuracy": acc, "collapsed_layers": []}}
    for name, value in controls.items():
        variants[name] = {"final_test_accuracy": value, "collapsed_layers": []}
    return {"method": method, "density": density, "scope": "global", "variants": variants}


def test_pai_sweep_table_and_figures(tmp_path):
    _write(tmp_path / "snip_a", _pai("snip", 0.1, 0.9, shuffle=0.85))
    _write(tmp_path / "snip_b", _pai("snip", 0.01, [0.5, 0.7], shuffle=[0.4, 0.4]))
    _write(tmp_path / "random_a", _pai("random", 0.1, 0.8))
    (tmp_path / "not_a_run").mkdir()
    runs = sweeps.find_runs(str(tmp_path))
    assert sorted(r.kind for r in runs) == ["pai", "pai", "pai"]
    header, rows = sweeps.table(runs)
    assert header[:4] == ["method", "% weights", "final test accuracy", "shuffle"]
    by_key = {(r[0], r[1]): r for r in rows}
    assert by_key[("snip", "10")][2:4] == ["90.00", "85.00"]
    assert by_key[("snip", "1")][2] == "60.00 ± 10.00"  # replicates: mean ± std
    assert by_key[("random", "10")][3] == "-"
    paths = sweeps.figures(runs, str(tmp_path / "figures"))
    assert len(paths) == 2
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_supermask_sweep(tmp_path):
    for keep, acc in ((0.3, 0.6), (0.5, 0.7)):
        _write(tmp_path / f"k{keep}", {
            "method": "edge-popup", "keep": keep, "weight_init": "signed-constant",
            "final_test_accuracy": acc, "best_test_accuracy": acc + 0.01,
            "baselines": {"all_ones": 0.1},
        })
    runs = sweeps.find_runs(str(tmp_path))
    header, rows = sweeps.table(runs)
    assert header[1] == "% kept"
    assert [r[1] for r in rows] == ["30", "50"]
    assert rows[1][2:] == ["70.00", "71.00", "10.00"]
    assert sweeps.is_sweep(str(tmp_path))
    (path,) = sweeps.figures(runs, str(tmp_path / "fig"))
    assert path.endswith("supermask_accuracy.png")


def test_empty_or_missing_directory_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="dir"):
        sweeps.main(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no runs under"):
        sweeps.main(str(tmp_path))


def test_lotto_report_dispatches_sweeps(tmp_path, capsys):
    from lotto_jax.runs.cli import run

    _write(tmp_path / "snip_a", _pai("snip", 0.1, 0.9))
    runs, ((title, header, rows),), paths = run(["report", str(tmp_path)])
    assert len(runs) == 1 and header[0] == "method" and len(paths) == 1
    assert title == "pruning at initialisation"
    assert rows[0][:3] == ["snip", "10", "90.00"]
    assert "sweep" in capsys.readouterr().out
