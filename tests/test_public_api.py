"""The public surface: every public module sets ``__all__`` and every name resolves.

Modules are discovered with ``pkgutil``, so modules added later are covered without
editing this file. Private modules (``_x``) are skipped.
"""

import importlib
import pkgutil
import types

import pytest

import lotto_jax


def _public_modules(package):
    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        full = f"{package.__name__}.{info.name}"
        names.append(full)
        if info.ispkg:
            names += _public_modules(importlib.import_module(full))
    return names


PUBLIC_MODULES = _public_modules(lotto_jax)


def test_discovers_the_core_modules():
    for name in ("masks", "prune", "scores", "sparse"):
        assert f"lotto_jax.{name}" in PUBLIC_MODULES


def test_package_all_resolves():
    assert lotto_jax.__all__, "lotto_jax.__all__ is empty"
    assert len(set(lotto_jax.__all__)) == len(lotto_jax.__all__), "duplicate names"
    for name in lotto_jax.__all__:
        assert hasattr(lotto_jax, name), (
            f"lotto_jax.{name} listed in __all__ but missing"
        )
    assert isinstance(lotto_jax.__version__, str)


def test_modules_in_package_all_have_all():
    for name in lotto_jax.__all__:
        obj = getattr(lotto_jax, name)
        if isinstance(obj, types.ModuleType):
            assert hasattr(obj, "__all__"), f"lotto_jax.{name} has no __all__"
            for attr in obj.__all__:
                assert hasattr(obj, attr), f"lotto_jax.{name}.{attr} missing"


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_module_all_resolves(modname):
    mod = importlib.import_module(modname)
    assert hasattr(mod, "__all__"), f"{modname} has no __all__"
    assert isinstance(mod.__all__, list | tuple)
    assert len(set(mod.__all__)) == len(mod.__all__), (
        f"{modname}.__all__ has duplicates"
    )
    for attr in mod.__all__:
        assert isinstance(attr, str)
        assert hasattr(mod, attr), f"{modname}.{attr} listed in __all__ but missing"
        assert not attr.startswith("_") or attr.startswith("__"), (
            f"{modname}.{attr} private"
        )


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_star_import(modname):
    namespace = {}
    exec(f"from {modname} import *", namespace)
    mod = importlib.import_module(modname)
    assert set(mod.__all__) <= set(namespace)


def test_models_subpackage():
    assert "lotto_jax.models" in PUBLIC_MODULES
    models = importlib.import_module("lotto_jax.models")
    assert models.__all__
    for attr in models.__all__:
        assert getattr(models, attr) is not None
