"""Build the third-party dependency layer without Docker.

``pip install --platform manylinux2014_aarch64 --implementation cp --python-version 3.12
--only-binary=:all: --target build/layers/deps/python`` from the hashed
``layers/dependencies/requirements.txt`` (written by ``make lock``). What the Lambda
runtime already ships (boto3, botocore, s3transfer) is left out, and so is every
``__pycache__``. The result is cached: a stamp next to the layer holds the hash of the
inputs (the requirements file and this recipe), and the layer is rebuilt only when that
hash changes. Builds are serialized with a file lock and swapped in atomically, so a
synth running beside a test session never sees half a layer.

Run it alone with ``python -m infra.layer_build [--force]``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "layers" / "dependencies" / "requirements.txt"
DEPS_LAYER_DIR = ROOT / "build" / "layers" / "deps"

# The Lambda Python runtime ships these; bundling them would only add megabytes.
PROVIDED_BY_LAMBDA: tuple[str, ...] = ("boto3", "botocore", "s3transfer")
# Target: Lambda python3.12 on arm64 (Amazon Linux 2023).
PLATFORM_ARGS: tuple[str, ...] = (
    "--platform",
    "manylinux2014_aarch64",
    "--implementation",
    "cp",
    "--python-version",
    "3.12",
    "--only-binary=:all:",
)
# Bump when the recipe below changes in a way the inputs' hash cannot see.
RECIPE_VERSION = "1"

Installer = Callable[[Path, Path], None]  # (filtered requirements file, target dir) -> None


@dataclass(frozen=True)
class LayerBuild:
    path: Path  # the layer asset directory (contains python/)
    input_hash: str
    rebuilt: bool


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==")


def filter_requirements(text: str, drop: Sequence[str] = PROVIDED_BY_LAMBDA) -> str:
    """The hashed requirements without the packages in ``drop`` (each entry with its hash lines)."""
    dropped = {_normalize(d) for d in drop}
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            m = _REQ_LINE.match(line)
            skipping = bool(m and _normalize(m.group(1)) in dropped)
        elif line.startswith("#"):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def requirement_names(text: str) -> list[str]:
    """Normalized names of the pinned requirements in a requirements file."""
    return [_normalize(m.group(1)) for line in text.splitlines() if (m := _REQ_LINE.match(line))]


def input_hash(requirements: Path = REQUIREMENTS) -> str:
    h = hashlib.sha256()
    for part in (RECIPE_VERSION, " ".join(PLATFORM_ARGS), ",".join(PROVIDED_BY_LAMBDA)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(requirements.read_bytes())
    return h.hexdigest()


def _stamp_path(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".stamp")


def _pip_command() -> list[str]:
    """pip for the current interpreter, else the first pip on PATH; the flags make it platform-neutral."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    for candidate in ("pip3", "pip"):
        found = shutil.which(candidate)
        if found:
            return [found]
    uv = ROOT / ".tools" / "bin" / "uv"
    if uv.exists():
        return [str(uv), "pip"]
    raise RuntimeError("no pip (or uv) found to build the dependency layer")


def pip_install(requirements: Path, target: Path) -> None:
    """The default installer: a platform-targeted, binary-only, hash-checked pip install."""
    cmd = _pip_command()
    if cmd[-1] == "pip" and cmd[0].endswith("uv"):
        # uv's spelling of the same request (only used when no pip exists on the machine).
        args = [
            "install",
            "--python-platform",
            "aarch64-manylinux2014",
            "--python-version",
            "3.12",
            "--only-binary",
            ":all:",
        ]
    else:
        args = ["install", "--quiet", "--disable-pip-version-check", "--no-compile", *PLATFORM_ARGS]
    args += ["--no-deps", "--require-hashes", "--target", str(target), "-r", str(requirements)]
    subprocess.run([*cmd, *args], check=True)


def strip_layer(python_dir: Path, drop: Sequence[str] = PROVIDED_BY_LAMBDA) -> list[str]:
    """Remove what Lambda provides, ``__pycache__``/``*.pyc`` and console scripts. Returns what went."""
    removed: list[str] = []
    dropped = {_normalize(d) for d in drop}
    for entry in sorted(python_dir.iterdir()):
        base = entry.name.split("-")[0] if entry.name.endswith((".dist-info", ".egg-info")) else entry.name
        if _normalize(base) in dropped or entry.name == "bin":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry.name)
    for cache in sorted(python_dir.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
        removed.append(str(cache.relative_to(python_dir)))
    for pyc in python_dir.rglob("*.pyc"):
        pyc.unlink()
    return removed


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_current(out_dir: Path = DEPS_LAYER_DIR, requirements: Path = REQUIREMENTS) -> bool:
    stamp = _stamp_path(out_dir)
    return (
        (out_dir / "python").is_dir()
        and stamp.exists()
        and stamp.read_text().strip() == input_hash(requirements)
    )


def build_dependency_layer(
    requirements: Path = REQUIREMENTS,
    out_dir: Path = DEPS_LAYER_DIR,
    *,
    installer: Installer = pip_install,
    force: bool = False,
) -> LayerBuild:
    """Build (or reuse) the dependency layer; returns its directory and whether it was rebuilt."""
    digest = input_hash(requirements)
    stamp = _stamp_path(out_dir)
    with _locked(out_dir.with_name(out_dir.name + ".lock")):
        if not force and is_current(out_dir, requirements):
            return LayerBuild(path=out_dir, input_hash=digest, rebuilt=False)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        try:
            filtered = tmp / "requirements.txt"
            filtered.write_text(filter_requirements(requirements.read_text()))
            installer(filtered, tmp / "python")
            filtered.unlink()
            strip_layer(tmp / "python")
            stamp.unlink(missing_ok=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stamp.write_text(digest + "\n")
    return LayerBuild(path=out_dir, input_hash=digest, rebuilt=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the posync dependency layer (no Docker).")
    parser.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    ns = parser.parse_args(argv)
    result = build_dependency_layer(force=ns.force)
    state = "built" if result.rebuilt else "up to date"
    sys.stdout.write(f"dependency layer {state}: {result.path} ({result.input_hash[:12]})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
