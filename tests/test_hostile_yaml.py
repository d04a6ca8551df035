"""Hostile policy and hardware files: alias bombs, recursive aliases, deep nesting, bad scalars and
bytes that are not UTF-8 each give a PolicyError naming FILE:LINE, quickly and in little memory,
and ``e2actors plan`` prints it on one line."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from e2actors.errors import E2Error, PolicyError
from e2actors.manager.hardware import Hardware
from e2actors.manager.policy import Policy
from e2actors.manager.yamlsrc import MAX_ALIAS_NODES, MAX_ALIASES, MAX_DEPTH, load_yaml


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: each level lists the previous one ``width`` times (9 levels of 9:
    387 million strings once expanded, from about 430 bytes)."""
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40) -> str:
    """The same with merge keys: each mapping merges the previous one twice (2**40 entries)."""
    lines = ["m0: &m0 {k: v}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}")
    return "\n".join(lines) + "\n"


def load_both(text: str) -> list[PolicyError]:
    """The error of loading ``text`` as a policy and as a hardware file."""
    errs = []
    for load in (lambda: Policy.from_yaml(text, "bad.yaml", check_classes=False),
                 lambda: Hardware.from_yaml(text, "bad.yaml")):
        with pytest.raises(PolicyError) as ei:
            load()
        errs.append(ei.value)
    return errs


def test_alias_bomb_refused_at_its_line():
    text = billion_laughs()
    assert len(text) < 500
    for e in load_both(text):
        assert e.file == "bad.yaml"
        # level 6 is where 9**5 * 9 ... crosses the bound: the line of the alias that did it
        assert e.line == 6 and e.column > 1, str(e)
        assert "aliases expand to more than" in e.reason and e.reason.startswith("YAML refused"), e.reason


def test_merge_key_bomb_refused():
    for e in load_both(merge_bomb()):
        assert e.line > 1 and "aliases expand" in e.reason, str(e)


@pytest.mark.parametrize("text, line", [
    ("nfs: &a\n  x: *a\n", 2),                     # a mapping containing itself
    ("nfs: &a [*a]\n", 1),                         # a list containing itself
    ("a: &a\n  b:\n    - c: [1, *a]\n", 3),         # deeper inside
    ("? &k [*k]\n: 1\n", 1),                       # as a key
])
def test_recursive_alias_is_an_error_not_a_recursion_error(text, line):
    for e in load_both(text):
        assert e.line == line and "recursive alias" in e.reason, str(e)


def test_alias_count_bounded():
    ok = "a: &a 1\nb: [" + ", ".join(["*a"] * MAX_ALIASES) + "]\n"
    assert load_yaml(ok)["b"] == [1] * MAX_ALIASES
    for e in load_both("a: &a 1\nb:\n" + "".join(["  - *a\n"] * (MAX_ALIASES + 1))):
        assert e.line == MAX_ALIASES + 3 and f"more than {MAX_ALIASES} aliases" in e.reason, str(e)


def test_expansion_just_under_the_bound_loads():
    """The bound counts values: a list of MAX_ALIAS_NODES - 1 values, aliased once, is fine."""
    n = MAX_ALIAS_NODES - 1
    text = "a: &a [" + ",".join(["0"] * n) + "]\nb: *a\n"
    data = load_yaml(text)
    assert len(data["b"]) == n and data["b"].line() == 1
    with pytest.raises(PolicyError, match=r"bad.yaml:3:4: YAML refused: aliases expand"):
        Policy.from_yaml(text + "c: *a\n", "bad.yaml", check_classes=False)


@pytest.mark.parametrize("text", [
    "[" * 5000,                                    # flow nesting, unclosed
    "{a: " * 5000,
    "".join(" " * i + "- \n" for i in range(MAX_DEPTH + 5)),   # block nesting
    "a:\n" + "".join(" " * i + "b:\n" for i in range(1, MAX_DEPTH + 5)),
])
def test_deep_nesting_refused(text):
    for e in load_both(text):
        assert f"nested deeper than {MAX_DEPTH} levels" in e.reason and e.line >= 1, str(e)


def test_nesting_at_the_bound_loads():
    text = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)
    v = load_yaml(text)
    for _ in range(MAX_DEPTH - 2):
        v = v[0]
    assert v == [1]


@pytest.mark.parametrize("text, line, words", [
    ("name: x\nnfs: 2001-02-30\n", 2, "day is out of range"),
    ("name: x\nnfs:\n  a: !!int abc\n", 3, "invalid literal"),
    ("name: x\nnfs: !!binary 'a'\n", 2, "base64"),
    ("name: x\nnfs: !!float 'x'\n", 2, "could not convert"),
    ("name: x\nnfs: !!python/object:os.system x\n", 2, "could not determine a constructor"),
    ("a: &x 1\nb: &x 2\n", 2, "duplicate anchor 'x'; first occurrence (line 1), second occurrence"),
    ("a: 1\nb: \x00\n", 2, "unacceptable character"),
])
def test_bad_scalars_and_characters_name_the_line(text, line, words):
    for e in load_both(text):
        assert e.line == line and words in e.reason, str(e)


def test_file_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "pol.yaml"
    f.write_bytes(b"name: x\nnfs:\n  a: \xff\xfe\n")
    with pytest.raises(PolicyError) as ei:
        Policy.load(f, check_classes=False)
    assert ei.value.line == 3 and "not UTF-8" in ei.value.reason, str(ei.value)
    f.write_bytes(b"servers:\r\n  - {name: s1, cores: 2}\r\n")   # CRLF still reads as before
    assert Hardware.load(f).servers["s1"].cores == 2


def test_anchors_in_a_real_policy_still_work():
    """Anchors and merge keys are fine within the bounds: a shared NF description."""
    text = """\
name: shared
nfs:
  a: &counter {class: e2actors.nf.builtin.counter:Counter, cost_pps: 50k}
  b: {<<: *counter, cost_pps: 70k}
classes: [{name: all, filter: ip, load_pps: 1000}]
edges:
  - {from: in, to: a}
  - {from: a, to: b}
  - {from: b, to: out}
"""
    p = Policy.from_yaml(text, "shared.yaml")
    assert p.nfs["a"].cost_pps == 50_000 and p.nfs["b"].cost_pps == 70_000
    assert p.nfs["b"].cls == p.nfs["a"].cls


def _limit_memory() -> None:
    # 512 MB of address space: the CLI needs about 100 MB; the bomb, expanded, needs tens of GB
    resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))


@pytest.mark.parametrize("maker, line", [(billion_laughs, 6), (lambda: "nfs: &a [*a]\n", 1),
                                         (lambda: "[" * 100_000, 1)])
def test_plan_prints_one_line(tmp_path: Path, maker, line):
    """``e2actors plan`` on a hostile file: exit 2 and one line on stderr, within a memory limit
    (the timeout only guards against a hang)."""
    f = tmp_path / "hostile.yaml"
    f.write_text(maker())
    r = subprocess.run([sys.executable, "-m", "e2actors", "plan", str(f)], capture_output=True, text=True,
                       preexec_fn=_limit_memory, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"e2actors plan: {f}:{line}:") and "YAML refused" in lines[0], lines[0]
    assert issubclass(PolicyError, E2Error)
