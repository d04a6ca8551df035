"""Every code block of the user guide runs, so the docs cannot drift from the code.

The guide is ``docs/*.md`` (and ``deploy/README.md``). Each fenced block's language says what
happens to it; each file's blocks run in order, in a fresh temporary directory of their own that
holds links ``examples`` and ``benchmarks`` to the repository's (so ``examples/seed/policy.yaml``
works as in a checkout):

- ``python``: executed (one namespace per file, so a later block sees what an earlier one
  defined); the repository and the temporary directory are on ``sys.path``. A block whose first
  line is ``# file: NAME`` is also written to NAME (e.g. a pipelet module that a policy names).
- ``sh``: each command line (``\\`` continues a line, ``#`` starts a comment) must start with
  ``e2actors`` or ``python`` and is run in a child process (see :func:`run_command`) that must
  exit 0, or with N when the line ends in ``# exit N``.
- ``yaml``: parsed; a policy (a mapping with ``nfs``) is validated with ``Policy``, a hardware
  file (with ``servers``) with ``Hardware``. ``# file: NAME`` on the first line writes it to NAME.
  A block with a ``# invalid: WHY`` line shows a mistake: validating it must raise ``PolicyError``.
- ``json``: parsed.
- ``text``: the visible "not run" convention, for what cannot run here (systemd, kubectl, output
  shown for reading, commands needing root or other machines).

Any other fence (or none) fails the test: every block is either run or explicitly ``text``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "deploy" / "README.md"]
RUN = {"python", "sh", "yaml", "json"}
NOT_RUN = {"text"}

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^`\n]*)$")


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    code: str

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'})"


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang = m.group("info").strip().split(" ")[0] if m.group("info").strip() else ""
        start = i + 1
        body = []
        i += 1
        while i < len(lines) and not re.match(rf"^ {{0,{indent}}}{re.escape(fence)}\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i].startswith(" " * indent) else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"{path}:{start}: unclosed code fence"
        out.append(Block(path, start, lang, "\n".join(body) + "\n"))
        i += 1
    return out


def file_name(code: str) -> str | None:
    first = code.split("\n", 1)[0]
    m = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
    return m.group(1) if m else None


def commands(code: str) -> list[tuple[list[str], int]]:
    """(argv, expected exit status) of each command line of a ``sh`` block."""
    out = []
    logical = ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip() and not logical.lstrip().startswith("#"):
            expect = 0
            m = re.search(r"#\s*exit\s+(\d+)\s*$", logical)
            if m:
                expect = int(m.group(1))
            argv = shlex.split(logical, comments=True)
            out.append((argv, expect))
        logical = ""
    return out


def test_every_block_is_run_or_marked_text() -> None:
    seen = 0
    for path in DOCS:
        for b in blocks(path):
            seen += 1
            assert b.lang in RUN | NOT_RUN, (f"{b.where()}: give every code block a language: one that runs "
                                             f"({', '.join(sorted(RUN))}) or 'text' for one that must not")
            if b.lang == "sh":
                for argv, _ in commands(b.code):
                    assert argv[0] in ("e2actors", "python"), \
                        f"{b.where()}: sh blocks run e2actors or python commands only (use 'text' otherwise): {argv}"
    assert seen > 30


def test_the_guide_is_complete() -> None:
    names = {p.name for p in DOCS}
    assert {"index.md", "writing-pipelets.md", "policies.md", "planning.md", "running.md", "metrics.md",
            "benchmarks.md"} <= names
    index = (ROOT / "docs" / "index.md").read_text()
    for p in DOCS:
        if p.parent.name == "docs" and p.name != "index.md":
            assert f"({p.name})" in index, f"index.md does not link {p.name}"


def run_command(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    """Run a command line of the docs in a child process: ``(exit status, stdout, stderr)``.

    By default the child is forked from this process, which has imported e2actors already, and
    calls the ``e2actors`` entry point (or runs the ``python`` script) there: the command runs in
    a process of its own, with its own exit status, without paying the interpreter's start-up
    and imports again (about a second each on a busy 2-core machine). ``E2_DOCS_EXEC=1`` runs
    ``python -m e2actors ...`` instead."""
    if argv[0] == "e2actors":
        full = [sys.executable, "-m", "e2actors", *argv[1:]]
    else:
        full = [sys.executable, *argv[1:]]
    if os.environ.get("E2_DOCS_EXEC") == "1" or not hasattr(os, "fork"):
        r = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout, r.stderr
    import e2actors.cli  # noqa: F401  (imported before the fork, once)

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
                sys.stdin = io.TextIOWrapper(io.FileIO(os.open(os.devnull, os.O_RDONLY), "r"))
                import logging

                logging.root.handlers.clear()  # pytest's capture handlers are not the child's
                sys.path[:0] = [str(cwd)]
                if argv[0] == "e2actors":
                    from e2actors.cli import main

                    sys.argv = ["e2actors", *argv[1:]]
                    code = main(argv[1:]) or 0
                else:
                    import runpy

                    args = argv[1:]
                    if args[:1] == ["-c"]:
                        sys.argv = ["-c", *args[2:]]
                        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
                    elif args[:1] == ["-m"]:
                        sys.argv = [args[1], *args[2:]]
                        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
                    else:
                        sys.argv = list(args)
                        sys.path[0] = str((cwd / args[0]).resolve().parent)
                        runpy.run_path(args[0], run_name="__main__")
                    code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError(f"{shlex.join(argv)} did not end within {timeout} s")
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"), err.read().decode(errors="replace")


def run_sh(b: Block, tmp: Path, env: dict[str, str]) -> None:
    for argv, expect in commands(b.code):
        code, stdout, stderr = run_command(argv, tmp, env)
        assert code == expect, (f"{b.where()}: {shlex.join(argv)} exited {code} (expected {expect})\n"
                                f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")


def run_python(b: Block, tmp: Path, ns: dict) -> None:
    name = file_name(b.code)
    if name:
        (tmp / name).write_text(b.code)
    code = compile(b.code, f"{b.file.name}:{b.line}", "exec")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, ns)
    except BaseException as e:
        raise AssertionError(f"{b.where()} raised {e!r}\noutput:\n{out.getvalue()[-3000:]}") from e


def check_yaml(b: Block, tmp: Path) -> None:
    from e2actors.errors import PolicyError
    from e2actors.manager.hardware import Hardware
    from e2actors.manager.policy import Policy

    name = file_name(b.code)
    data = yaml.safe_load(b.code)
    assert data is not None, f"{b.where()}: empty YAML"
    if name:
        (tmp / name).write_text(b.code)
    invalid = re.search(r"^\s*#\s*invalid:", b.code, re.M) is not None
    try:
        if isinstance(data, dict) and "nfs" in data:
            Policy.from_yaml(b.code, file=b.where(), base_dir=str(tmp))
        elif isinstance(data, dict) and "servers" in data:
            Hardware.from_yaml(b.code, file=b.where())
        else:
            assert not invalid, f"{b.where()}: '# invalid:' on a block that is neither a policy nor hardware"
            return
    except PolicyError:
        if invalid:
            return
        raise
    assert not invalid, f"{b.where()} is marked '# invalid:' but validates"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in ("examples", "benchmarks"):  # so that commands read as from a checkout
        (tmp_path / d).symlink_to(ROOT / d)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    # The blocks run as one module, registered like an imported one (dataclasses look it up).
    import types

    doc_module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
    ns: dict = doc_module.__dict__
    before = set(sys.modules)
    sys.modules[doc_module.__name__] = doc_module
    timings = []
    try:
        for b in blocks(path):
            t0 = time.monotonic()
            if b.lang == "python":
                run_python(b, tmp_path, ns)
            elif b.lang == "sh":
                run_sh(b, tmp_path, env)
            elif b.lang == "yaml":
                check_yaml(b, tmp_path)
            elif b.lang == "json":
                import json

                json.loads(b.code)
            timings.append((time.monotonic() - t0, b.line))
    finally:
        sys.modules.pop(doc_module.__name__, None)
        # Modules a block wrote and imported (e.g. its pipelets) must not leak into the next file.
        for mod in set(sys.modules) - before:
            f = getattr(sys.modules[mod], "__file__", None) or ""
            if f.startswith(str(tmp_path)):
                del sys.modules[mod]
    slow = sorted(timings, reverse=True)[:3]
    print(f"{path.name}: " + ", ".join(f"line {ln}: {t:.1f}s" for t, ln in slow))
