"""Test-wide JAX settings: strict like equinox's suite, and one compilation cache.

Implicit rank promotion raises, so a broadcast the code did not mean to do fails the
test instead of silently computing the wrong shape.

float32 matrix products run at full precision: on GPUs JAX's default lets them use
TF32 (10-bit mantissas, relative errors near 1e-4), which the numpy references of
the suite (rtol 1e-5 and below) would reject. On a CPU this changes nothing.

Compiled programs go to JAX's persistent compilation cache in a directory of this
session, shared by its xdist workers and removed at its end: a test that builds
the same trainer (the same program) as an earlier one, say the same driver with
another pruning method, loads the executable instead of compiling it again. Tracing
is untouched, so the suite's trace and jit-cache counts see what they always did;
the numbers are the same executables'. The ``lotto`` processes the tests start
use the same cache (tests/_killrun.py: :func:`xla_cache_env`) and the same matmul
precision, so a run made in a subprocess and the same run in this process share
their programs. Set ``LOTTO_TESTS_XLA_CACHE`` to keep a cache across sessions.
"""

import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # and in the test's subprocesses

_CACHE_ENV = "LOTTO_TESTS_XLA_CACHE"

# The helpers tests/_*.py are imported by the tests, never collected: under
# --doctest-modules pytest imports every module it finds, and _multidevice_train.py
# is a script that sets 8 host devices (XLA_FLAGS, inherited by every subprocess
# the worker starts) and trains at import, in each xdist worker before any test.
collect_ignore_glob = ["_*.py"]


def pytest_configure(config):
    if not os.environ.get(_CACHE_ENV):  # the session's first process: not a worker
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="lotto-tests-xla-")
        config._lotto_xla_cache = os.environ[_CACHE_ENV]  # removed by this process
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# Modules whose tests one xdist worker runs together: their module fixtures (trained
# runs, a compiled trainer, a big model's variables) are made once, not once per
# worker; modules of one group (test_imp and test_replicates: the same tiny IMP
# problem) run one after the other, the second loading the first's compiled
# programs from the cache instead of compiling them beside it. The others are
# spread test by test. (xdist's own ``xdist_group`` mark does not group under
# pytest 9.2, which no longer reads the node id xdist edits.)
ONE_WORKER = {
    "tests/test_dst.py": "dst",
    "tests/test_imp.py": "imp",
    "tests/test_models.py": "models",
    "tests/test_pai.py": "pai",
    "tests/test_replicates.py": "imp",
    "tests/test_resume_dst.py": "resume_dst",
    "tests/test_supermask.py": "supermask",
    "tests/test_train.py": "train",
}


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist's own
def pytest_xdist_make_scheduler(config, log):
    """``-n N`` (xdist's "load"): test by test, but :data:`ONE_WORKER` by group."""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):  # larger scopes are handed out first
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return ONE_WORKER.get(module, nodeid)

    return Scheduling(config, log)


def pytest_unconfigure(config):
    directory = getattr(config, "_lotto_xla_cache", None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)
