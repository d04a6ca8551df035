"""Shared test helpers: tools and privileges that some tests need.

On a laptop a test that needs root, network namespaces or an external tool skips with a reason.
In CI (``E2_REQUIRE_ROOT=1``) the same test fails instead, so nothing silently goes untested.
"""

from __future__ import annotations

import os
import shutil

import pytest

REQUIRED = os.environ.get("E2_REQUIRE_ROOT") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"E2_REQUIRE_ROOT=1 but {reason}")
    pytest.skip(reason)


def need_root() -> None:
    """Skip (or fail in CI) unless running as root."""
    if os.geteuid() != 0:
        _missing("needs root")


def need_tool(name: str) -> str:
    """Return the path of executable ``name``; skip (or fail in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        _missing(f"needs the {name!r} program (installed by ./dev.sh test as root)")
    return path  # type: ignore[return-value]


def need_path(path: str, what: str) -> str:
    """Return ``path`` if it exists; skip (or fail in CI) otherwise."""
    if not os.path.exists(path):
        _missing(f"needs {what} at {path} (installed by ./dev.sh test as root)")
    return path
