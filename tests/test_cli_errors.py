"""What a person reads when ``lotto`` refuses: one line, ``lotto: error: ...``.

Every case checks: a non-zero status, exactly one line on stderr that starts
``lotto: error:`` and names the flag or path at fault, and no traceback. Each kind
of refusal (a config value of every command, a data file, a run directory, the
store, a report, ``--debug``) runs the installed ``lotto`` entry point in a
subprocess; further cases of a kind call ``main``, the entry point's function, in
this process (:func:`here`: no interpreter start). The runs are tiny: a random 40-feature
``.npz`` (no MNIST-1D generation), 20 steps, 1 round; the one finished IMP run that
the resume and corruption cases need is made once and shared by the xdist workers
(file lock), with a shared persistent XLA cache.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _killrun import assert_one_line_error, xla_cache_env
from _killrun import here as run_here

_SCRIPT = os.path.join(os.path.dirname(sys.executable), "lotto")
LOTTO = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "lotto_jax.runs.cli"]
TINY = ["--model", "mlp", "--steps", "20", "--eval-every", "10", "--batch-size", "32"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A directory shared by the xdist workers of this session, holding the tiny
    dataset ``tiny.npz`` and the XLA cache."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    d = base / "cli_errors"
    d.mkdir(exist_ok=True)
    with _locked(d / "npz.lock"):
        if not (d / "tiny.npz").exists():
            r = np.random.default_rng(0)
            np.savez(d / "tiny.tmp.npz",
                     x_train=r.normal(size=(256, 40)).astype(np.float32),
                     y_train=r.integers(0, 10, 256),
                     x_test=r.normal(size=(64, 40)).astype(np.float32),
                     y_test=r.integers(0, 10, 64))
            os.replace(d / "tiny.tmp.npz", d / "tiny.npz")
    return d


class _locked:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "w")
        fcntl.flock(self.file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _env(shared):
    env = {k: v for k, v in os.environ.items() if k != "LOTTO_DEBUG"}
    env.update(JAX_PLATFORMS="cpu", **xla_cache_env(shared / "xla_cache"))
    return env


def lotto(shared, *args):
    return subprocess.run([*LOTTO, *map(str, args)], capture_output=True, text=True,
                          env=_env(shared), timeout=300)


@pytest.fixture
def here(capsys, monkeypatch):
    """``here(*args)``: ``lotto ARGS`` run by ``main`` in this process, as a
    CompletedProcess like :func:`lotto`'s."""
    from lotto_jax.runs import cli

    monkeypatch.delenv("LOTTO_DEBUG", raising=False)

    def run(*args):
        capsys.readouterr()
        status = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["lotto", *map(str, args)], status, out, err)

    return run




def imp_args(shared, out):
    """The tiny IMP run: rounds 0-2, the shuffle control, a checkpoint at step 10."""
    return ["imp", "--dataset", f"npz:{shared / 'tiny.npz'}", "--rounds", "2",
            "--controls", "shuffle", "--save-every", "10", *TINY, "--out", str(out)]


@pytest.fixture(scope="module")
def finished_imp(shared):
    """The uninterrupted :func:`imp_args` run (made once per session, shared with
    tests/test_run_layer.py) and its arguments."""
    d = shared / "imp2"
    with _locked(shared / "imp2.lock"):
        if not (d / "round_002" / "metrics.json").exists():
            shutil.rmtree(d, ignore_errors=True)
            result = run_here(imp_args(shared, d))  # no kill: in this process
            assert result.returncode == 0, result.stderr[-3000:]
    return d, imp_args(shared, d)


def _copy_run(finished_imp, tmp_path):
    d, args = finished_imp
    copy = tmp_path / "run"
    shutil.copytree(d, copy)
    return copy, [str(copy) if a == str(d) else a for a in args]


# ------------------------------------------------------------ names and values


def test_unknown_model(shared, tmp_path, here):
    r = here("train", *TINY, "--model", "lenet7",
              "--dataset", f"npz:{shared / 'tiny.npz'}", "--out", tmp_path / "out")
    line = assert_one_line_error(r, "--model", "lenet7")
    assert "lenet300" in line  # what was expected


def test_unknown_pai_method(shared, tmp_path, here):
    r = here("pai", "--method", "snap", "--out", tmp_path / "out")
    assert_one_line_error(r, "--method", "snap", "synflow")


def test_unknown_control(shared, tmp_path, here):
    r = here("imp", "--controls", "reinit", "bogus", "--out", tmp_path / "out")
    assert_one_line_error(r, "--controls", "bogus", "shuffle")


@pytest.mark.parametrize("command, flag, value", [
    ("imp", "--fraction", "1.5"),
    ("pai", "--density", "0"),
    ("supermask", "--keep", "2"),
    ("dst", "--density", "1.5"),
])
def test_out_of_range_fraction_density_keep(shared, tmp_path, here, command, flag, value):
    """A config's refusal of a value, each command's: through the installed entry
    point for imp and dst, by ``main`` here for pai and supermask."""
    args = (command, flag, value, "--out", tmp_path / "out")
    r = lotto(shared, *args) if command in ("imp", "dst") else here(*args)
    assert_one_line_error(r, flag, "expected")


DST_BAD = [
    # (arguments, what the one line must name)
    (["--density", "0"], ["--density", "(0.0, 1.0]", "got 0.0"]),
    (["--drop-fraction", "1.2"], ["--drop-fraction", "[0.0, 1.0]", "1.2"]),
    (["--update-every", "0"], ["--update-every", ">= 1", "got 0"]),
    (["--end", "30"], ["--end", "step 30", "20 training steps"]),  # TINY: 20 steps
    (["--method", "granet", "--end", "30"], ["--end", "granet", "20 training steps"]),
    (["--method", "rigl2"], ["--method", "'rigl2'", "granet"]),
    (["--distribution", "erkk"], ["--distribution", "'erkk'", "uniform"]),
    (["--distribution", "uniform", "--density", "0.0003"],  # output: 0.3 of 1000 weights
     ["--density", "'output/kernel'", "would keep no weight"]),
    (["--dense", "Dense_9"], ["--dense", "'Dense_9'", "matches no", "Dense_0/kernel"]),
    (["--method", "gmp", "--scope", "global", "--dense", "Dense_0"],
     ["--dense", "--scope layerwise"]),
    (["--groups", "module"], ["--groups", "'leaf' or 'layer'", "'module'"]),
    (["--structure", "neuron", "--method", "rigl"], ["--method", "'rigl'", "grown unit"]),
    (["--structure", "2:4", "--density", "0.3"], ["--density", "2:4", "0.5"]),
    (["--structure", "2:4", "--method", "gmp"], ["--method", "'gmp'", "2/4"]),
    (["--structure", "3:7", "--method", "static"], ["--structure", "'3:7'", "does not divide"]),
    (["--structure", "layer", "--method", "static"], ["--structure", "'layer'", "MLP"]),
    (["--structure", "neuron", "--groups", "layer"], ["--groups", "weight only"]),
    (["--structure", "neuron", "--method", "gmp", "--density", "0.001"],
     ["--density", "units)", "would keep no unit"]),
    (["--structure", "4:2"], ["--structure", "N < M"]),
]


@pytest.mark.parametrize(("args", "names"), DST_BAD, ids=[" ".join(a) for a, _ in DST_BAD])
def test_bad_dst_input_names_its_flag_and_writes_nothing(shared, tmp_path, capsys, args,
                                                         names):
    """``lotto dst`` refusals, in this process (``main`` is the entry point; the
    subprocess path is the ``--density 1.5`` case above): one line naming the
    flag, status 2, and no run directory written (the layer checks run on the
    model's shapes before the store is opened)."""
    from lotto_jax.runs import cli

    out = tmp_path / "out"
    status = cli.main(["dst", "--dataset", f"npz:{shared / 'tiny.npz'}", *TINY, *args,
                       "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = err.splitlines()
    assert line.startswith("lotto: error: ") and "Traceback" not in err
    for name in names:
        assert name in line, (name, line)
    assert not out.exists()


def test_bad_rewind_spec(shared, tmp_path, here):
    r = here("imp", "--rewind", "step:abc", *TINY, "--out", tmp_path / "out")
    assert_one_line_error(r, "--rewind", "step:abc")


def test_too_big_mesh(shared, tmp_path, here):
    r = here("train", "--mesh", "data=64", "--dataset", f"npz:{shared / 'tiny.npz'}",
              *TINY, "--out", tmp_path / "out")
    assert_one_line_error(r, "--mesh", "data=64", "devices")


# ------------------------------------------------------------------ data files


def test_missing_npz(shared, tmp_path):
    path = tmp_path / "nowhere.npz"
    r = lotto(shared, "train", "--dataset", f"npz:{path}", "--out", tmp_path / "out")
    assert_one_line_error(r, path, "no such file")


@pytest.mark.parametrize("kind", ["not-an-npz", "missing-arrays", "length-mismatch"])
def test_malformed_npz(shared, tmp_path, kind, here):
    path = tmp_path / "bad.npz"
    x, y = np.zeros((10, 40), np.float32), np.zeros(10, np.int64)
    if kind == "not-an-npz":
        path.write_text("x,y\n1,2\n")
        expect = "not a zip archive"
    elif kind == "missing-arrays":
        np.savez(path, x_train=x, y_train=y)
        expect = "x_test"
    else:  # x_train and y_train lengths differ
        np.savez(path, x_train=x, y_train=y[:9], x_test=x, y_test=y)
        expect = "y_train"
    r = here("train", "--dataset", f"npz:{path}", "--out", tmp_path / "out")
    assert_one_line_error(r, path, expect)


def test_unprepared_tfds_dataset_fails_fast_offline(shared, tmp_path):
    empty = tmp_path / "tfds"
    empty.mkdir()
    r = lotto(shared, "train", "--dataset", "tfds:mnist", "--data-dir", empty,
              "--out", tmp_path / "out")
    line = assert_one_line_error(r, "tfds:mnist", empty, "not prepared", "npz:PATH",
                                 "mnist1d")
    # no download was attempted (not a failed one), and nothing was written
    assert "download=False" in line and "downloading it failed" not in line
    assert list(empty.iterdir()) == []


def test_missing_mask_directory(shared, tmp_path, here):
    """Checked before the model and data are built: a missing dataset file is not
    even looked at."""
    mask = tmp_path / "no_mask"
    r = here("train", "--mask", mask, "--dataset", f"npz:{tmp_path / 'none.npz'}",
              *TINY, "--out", tmp_path / "out")
    assert_one_line_error(r, "--mask", mask, "no checkpoint directory")
    assert not (tmp_path / "out").exists()


def test_missing_run_directory_for_report(shared, tmp_path, here):
    r = here("report", tmp_path / "no_run")
    assert_one_line_error(r, tmp_path / "no_run", "no such run directory")


# -------------------------------------------------------------- the run store


def test_changed_config_on_resume(shared, finished_imp, tmp_path):
    d, args = _copy_run(finished_imp, tmp_path)
    args[args.index("--rounds") + 1] = "3"  # allowed to change; --fraction is not
    r = lotto(shared, *args, "--fraction", "0.3")
    assert_one_line_error(r, d, "fraction: 0.2 -> 0.3", "--overwrite", "--new-dir")


def test_corrupt_checkpoint_exits_with_one_line_not_an_abort(shared, finished_imp, tmp_path):
    """A corrupt file of round 2 found when round 3 starts: the error line and
    status 2. It aborted (status 134, "terminate called after throwing an
    instance of ''"): the pruning warm-up thread, a daemon, was still in XLA at
    interpreter exit (it did with a warm XLA cache too)."""
    d, args = _copy_run(finished_imp, tmp_path)
    final = d / "round_002" / "final"
    victim = sorted(p for p in final.rglob("*") if p.is_file() and p.parent.name == "d")[0]
    victim.write_bytes(b"garbage")
    args[args.index("--rounds") + 1] = "3"
    r = lotto(shared, *args)
    assert_one_line_error(r, victim, "bytes")
    assert "terminate called" not in r.stderr


# ------------------------------------------------------------------ debugging


def test_debug_shows_the_traceback(shared, tmp_path, monkeypatch):
    r = lotto(shared, "pai", "--method", "snap", "--debug", "--out", tmp_path / "out")
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "method: expected one of" in r.stderr
    assert "lotto: error:" not in r.stderr
    # LOTTO_DEBUG=1 does the same (in this process: main re-raises)
    from lotto_jax.runs import cli

    monkeypatch.setenv("LOTTO_DEBUG", "1")
    with pytest.raises(Exception, match="method: expected one of"):
        cli.main(["pai", "--method", "snap", "--out", str(tmp_path / "out")])
    monkeypatch.setenv("LOTTO_DEBUG", "0")
    assert cli.main(["pai", "--method", "snap", "--out", str(tmp_path / "out")]) == 2


def test_a_value_of_the_wrong_type_names_its_flag(capsys):
    """tyro's conversion failure (in this process: ``main`` is the entry point)."""
    from lotto_jax.runs import cli

    assert cli.main(["imp", "--fraction", "abc"]) == 2
    err = capsys.readouterr().err
    assert err == "lotto: error: --fraction: could not convert string to float: 'abc' " \
                  "(expected FLOAT)\n", err


def test_only_errors_the_package_raises_are_user_errors():
    """The rule of ``main``: a bug (wrong type, or a ValueError from outside the
    package) keeps its traceback; messages become one line."""
    from lotto_jax import sharding
    from lotto_jax.runs import cli, store

    def caught(fn):
        try:
            fn()
        except Exception as e:
            return e
        raise AssertionError("no exception")

    e = caught(lambda: sharding.parse_mesh("data=x"))
    assert cli._user_error(e) == "mesh: size of 'data' must be an int, got 'x'"
    assert cli._user_error(caught(lambda: np.zeros(3).reshape(2))) is None  # numpy's
    assert cli._user_error(caught(lambda: store._json_default(object()))) is None  # TypeError
    assert cli._user_error(caught(lambda: int("x"))) is None  # raised here, not by lotto_jax
    assert cli._user_error(cli._ConfigError("a\n  b\n\nc")) == "a b c"
    assert cli._user_error(FileNotFoundError(2, "No such file", "/x")) is not None


# ----------------------------------------------------------------------- help


def test_help_is_plain_text(shared):
    """``lotto --help`` and every ``lotto COMMAND --help``: the docstrings' text
    without reST markup (one process: help rendering only)."""
    from lotto_jax.runs.cli import COMMANDS

    code = (
        "import sys\nfrom lotto_jax.runs.cli import main\n"
        "for argv in [['--help']] + [[c, '--help'] for c in sys.argv[1:]]:\n"
        "    print('=== ' + ' '.join(argv), flush=True)\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *COMMANDS], capture_output=True,
                       text=True, env=_env(shared), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for text in r.stdout.split("=== ")[1:]:
        head = text.splitlines()[0]
        assert "--help" in text and len(text) > 200, head
        for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
            assert markup not in text, (head, markup)
    assert r.stdout.count("=== ") == len(COMMANDS) + 1
