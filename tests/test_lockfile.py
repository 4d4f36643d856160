"""Guard tests: the lock files pin, with hashes, everything pyproject.toml asks for, and the venv
running the tests is the dev lock; a dependency added to pyproject.toml without `make lock`
fails here."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = REPO_ROOT / "requirements" / "runtime.lock"
DEV_LOCK = REPO_ROOT / "requirements" / "dev.lock"
BUILD_LOCK = REPO_ROOT / "requirements" / "build.lock"
LOCKS = (RUNTIME_LOCK, DEV_LOCK, BUILD_LOCK)
RELOCK = "run `make lock` and commit requirements/"

# The one shape a lock line may take once its continuations are joined: `name==version`, an
# optional environment marker (without `-`, so no option hides in it), then sha256 hashes.
# Anything else (an index URL, `-r`, `-e`, a direct URL, a range, a weaker hash) would let pip
# install something the lock did not pin.
_PIN = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9.!+_-]+)"
    r"(?: ?; [A-Za-z0-9_.<>=!~'\" ()]+)?"
    r"(?P<hashes>(?: --hash=sha256:[0-9a-f]{64})+)"
)
_COMMENT = re.compile(r"(?:^|\s)#.*$")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: frozenset[str]


@dataclass(frozen=True)
class Lock:
    pins: Mapping[NormalizedName, Pin]
    bad_lines: list[str]


def parse_lock(text: str) -> Lock:
    pins: dict[NormalizedName, Pin] = {}
    bad: list[str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        line = " ".join(_COMMENT.sub("", raw).split())
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            bad.append(line)
            continue
        name = canonicalize_name(match["name"])
        if name in pins:
            bad.append(f"{line} (pinned twice)")
            continue
        hashes = frozenset(re.findall(r"sha256:([0-9a-f]{64})", match["hashes"]))
        pins[name] = Pin(Version(match["version"]), hashes)
    return Lock(pins, bad)


def read_lock(path: Path) -> Lock:
    return parse_lock(path.read_text(encoding="utf-8"))


def unpinned(requirements: Iterable[Requirement], lock: Lock) -> list[str]:
    """What the lock does not pin, or pins at a version the requirement excludes."""
    problems = []
    for req in requirements:
        pin = lock.pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req}: not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req}: the lock pins {pin.version}")
    return problems


def not_closed(lock: Lock, roots: Iterable[Requirement]) -> list[str]:
    """Requirements reachable from `roots` (extras included) that the lock does not pin.

    Reads the installed packages' metadata, which `test_the_venv_is_the_dev_lock` ties to the
    lock; an install with --require-hashes would refuse the same gaps, but nothing in CI installs
    runtime.lock (only the image does), so they are caught here.
    """
    missing: list[str] = []
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    todo = [(req, "pyproject.toml") for req in roots if _applies(req, frozenset())]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in lock.pins:
            missing.append(f"{req} (wanted by {wanted_by})")
            continue
        for line in metadata.requires(name) or []:
            child = Requirement(line)
            if _applies(child, frozenset(req.extras)):
                todo.append((child, name))
    return sorted(missing)


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in {"", *extras})


def _pyproject() -> dict[str, Any]:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def runtime_requirements() -> list[Requirement]:
    return [Requirement(spec) for spec in _pyproject()["project"]["dependencies"]]


def dev_requirements() -> list[Requirement]:
    return [Requirement(spec) for spec in _pyproject()["project"]["optional-dependencies"]["dev"]]


def build_requirements() -> list[Requirement]:
    return [Requirement(spec) for spec in _pyproject()["build-system"]["requires"]]


HASH = "--hash=sha256:" + "a" * 64


class TestParseLock:
    def test_a_pin_with_hashes_across_lines_is_read(self) -> None:
        lock = parse_lock(
            "# header\n"
            "Foo_Bar==1.2.post1 \\\n"
            f"    {HASH} \\\n"
            f"    --hash=sha256:{'b' * 64}\n"
            "    # via prefcenter (pyproject.toml)\n"
        )
        assert lock.bad_lines == []
        assert lock.pins == {"foo-bar": Pin(Version("1.2.post1"), frozenset({"a" * 64, "b" * 64}))}

    @pytest.mark.parametrize(
        "line",
        [
            "foo==1.0",
            f"foo>=1.0 {HASH}",
            f"foo {HASH}",
            f"foo==1.0 --hash=md5:{'a' * 32}",
            f"foo==1.0 --hash=sha256:{'a' * 63}",
            f"foo @ https://example.com/foo-1.0-py3-none-any.whl {HASH}",
            f"foo[bar]==1.0 {HASH}",
            "--extra-index-url https://example.com/simple",
            "--index-url https://example.com/simple",
            "--find-links /tmp/wheels",
            "--trusted-host example.com",
            "-r other.txt",
            "-c other.txt",
            "-e .",
            ".",
            f"foo==1.0 ; --extra-index-url=https://example.com/simple {HASH}",
        ],
    )
    def test_anything_but_a_hashed_pin_is_refused(self, line: str) -> None:
        assert parse_lock(line + "\n").bad_lines == [line]

    def test_a_pin_with_a_marker_is_read(self) -> None:
        lock = parse_lock(f'foo==1.0 ; python_version < "3.12" \\\n    {HASH}\n')
        assert lock.bad_lines == []
        assert list(lock.pins) == ["foo"]

    def test_a_name_pinned_twice_is_refused(self) -> None:
        lock = parse_lock(f"foo==1.0 {HASH}\nFoo==2.0 {HASH}\n")
        assert lock.bad_lines == [f"Foo==2.0 {HASH} (pinned twice)"]

    def test_missing_and_excluded_pins_are_reported(self) -> None:
        lock = parse_lock(f"fastapi==0.100.0 {HASH}\n")
        assert unpinned([Requirement("fastapi>=0.120"), Requirement("httpx>=0.27")], lock) == [
            "fastapi>=0.120: the lock pins 0.100.0",
            "httpx>=0.27: not in the lock",
        ]


class TestLocks:
    @pytest.mark.parametrize("path", LOCKS, ids=lambda path: path.name)
    def test_every_line_is_a_pin_with_a_hash(self, path: Path) -> None:
        lock = read_lock(path)
        assert lock.pins, f"{path.name} pins nothing"
        assert lock.bad_lines == [], f"{path.name}: not a hashed pin; {RELOCK}"

    def test_runtime_lock_pins_every_runtime_dependency(self) -> None:
        assert unpinned(runtime_requirements(), read_lock(RUNTIME_LOCK)) == [], RELOCK

    def test_dev_lock_pins_runtime_dev_and_build_dependencies(self) -> None:
        wanted = runtime_requirements() + dev_requirements() + build_requirements()
        assert unpinned(wanted, read_lock(DEV_LOCK)) == [], RELOCK

    def test_build_lock_pins_the_build_backend(self) -> None:
        assert unpinned(build_requirements(), read_lock(BUILD_LOCK)) == [], RELOCK

    def test_runtime_lock_holds_every_transitive_dependency(self) -> None:
        assert not_closed(read_lock(RUNTIME_LOCK), runtime_requirements()) == [], RELOCK

    def test_dev_lock_holds_every_transitive_dependency(self) -> None:
        roots = runtime_requirements() + dev_requirements() + build_requirements()
        assert not_closed(read_lock(DEV_LOCK), roots) == [], RELOCK

    def test_a_package_has_one_version_in_every_lock(self) -> None:
        versions: dict[NormalizedName, set[Version]] = {}
        for path in LOCKS:
            for name, pin in read_lock(path).pins.items():
                versions.setdefault(name, set()).add(pin.version)
        assert {name: v for name, v in versions.items() if len(v) > 1} == {}, RELOCK

    def test_the_venv_is_the_dev_lock(self) -> None:
        # make installs dev.lock before the tests run; a mismatch means this venv was built some
        # other way, or before the last `make lock`.
        mismatched = {}
        for name, pin in read_lock(DEV_LOCK).pins.items():
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = "nothing"
            if installed == "nothing" or Version(installed) != pin.version:
                mismatched[name] = f"{pin.version} pinned, {installed} installed"
        assert mismatched == {}, "run `make .venv/.installed-stamp`"
