"""The public surface (in the manner of trio's ``test_exports``): everything ``e2actors.__all__``
names is importable, documented and public; nothing public is left out by mistake."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import e2actors


def public_names() -> list[str]:
    return sorted(e2actors.__all__)


def test_all_has_no_duplicates_and_no_private_names() -> None:
    names = e2actors.__all__
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    private = [n for n in names if n.startswith("_") and n != "__version__"]
    assert not private, private


@pytest.mark.parametrize("name", public_names())
def test_every_public_name_imports_and_is_documented(name: str) -> None:
    obj = getattr(e2actors, name)  # (the manager's names load lazily, on first use)
    assert obj is not None
    if name == "__version__":
        assert isinstance(obj, str) and obj.count(".") >= 2
        return
    if isinstance(obj, (type, types.FunctionType)) or callable(obj):
        assert inspect.getdoc(obj), f"e2actors.{name} has no docstring"
        assert not obj.__module__.split(".")[-1].startswith("_") or obj.__module__ == "e2actors._version"


def test_from_e2actors_import_star() -> None:
    ns: dict = {}
    exec("from e2actors import *", ns)
    assert set(e2actors.__all__) <= set(ns)


def test_every_error_class_is_exported() -> None:
    """Users catch errors by class: every E2Error subclass of errors.py is in ``__all__``."""
    from e2actors import errors

    classes = {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, errors.E2Error)}
    assert classes <= set(e2actors.__all__), sorted(classes - set(e2actors.__all__))


def test_every_module_imports_and_lists_only_what_it_has() -> None:
    """Every module of the package imports on its own, and its ``__all__`` (when it has one)
    names only things it defines or imports."""
    bad = []
    for mod in pkgutil.walk_packages(e2actors.__path__, "e2actors."):
        if mod.name.endswith("__main__"):
            continue
        m = importlib.import_module(mod.name)
        for name in getattr(m, "__all__", ()):
            if not hasattr(m, name):
                bad.append(f"{mod.name}.{name}")
    assert not bad, bad
