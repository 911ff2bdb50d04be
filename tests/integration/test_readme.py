"""The README cannot drift: every command it shows exists, its links resolve, its pins and variables match.

- Every ``posync ...`` line in a shell code block resolves to a command of the click group
  (the longest chain of subcommand names), that command's ``--help`` exits 0, and every
  ``--option`` the line uses is one of that command's options.
- Every ``make TARGET`` resolves in the Makefile (``make -n TARGET`` exits 0; nothing runs).
- Relative links point at files that exist; the pinned CDK CLI is the one in package.json;
  every ``POSYNC_*`` variable the code reads is in the configuration reference.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from posync_local.cli import cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)```([A-Za-z0-9_-]*)\s*$")
SOURCES = ("layers/posync/python/posync", "local/posync_local", "functions", "infra")


@dataclass(frozen=True)
class Shown:
    line: int
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a shell (or unlabeled) fenced code block."""
    out: list[tuple[int, str]] = []
    inside: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            inside = None if inside is not None else fence.group(2).lower()
            continue
        if inside is not None and inside in SHELL_BLOCKS:
            out.append((number, line))
    return out


def commands(text: str, program: str) -> list[Shown]:
    """Every invocation of ``program`` in the shell blocks: its words up to a comment or redirect."""
    found: list[Shown] = []
    for number, line in shell_lines(text):
        body = line.split(" #", 1)[0].strip().removeprefix("$ ")
        for part in re.split(r"&&|\|\||;|\|", body):
            first = part.split(None, 1)[:1]
            if not first or Path(first[0]).name != program:
                continue
            words = shlex.split(part.strip(), comments=True)
            if words:
                cut = next((i for i, w in enumerate(words) if w[:1] in "<>"), len(words))
                found.append(Shown(number, tuple(words[1:cut])))
    return found


def resolve(words: tuple[str, ...]) -> tuple[list[str], click.Command]:
    """The longest chain of subcommands ``words`` names in the posync click group."""
    path: list[str] = []
    command: click.Command = cli
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return path, command


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


README_TEXT = README.read_text(encoding="utf-8")
POSYNC = commands(README_TEXT, "posync")
MAKE = commands(README_TEXT, "make")


def test_the_readme_shows_the_main_commands() -> None:
    # Given the README's shell blocks, then the parser found what a newcomer must see
    shown = {c.text for c in POSYNC} | {f"make {c.text}" for c in MAKE}
    for must in ("make demo", "make test", "make synth", "local up --sandbox", "exports list"):
        assert any(s == must or s.startswith(must + " ") for s in shown), must
    assert len(POSYNC) >= 15 and len(MAKE) >= 8


@pytest.mark.parametrize("shown", POSYNC, ids=[f"L{c.line}:{c.text[:50]}" for c in POSYNC])
def test_every_posync_command_in_the_readme_exists(shown: Shown) -> None:
    # Given a posync command line from the README
    path, command = resolve(shown.words)
    # Then it names a real command (not just the group), with only options that command has
    assert path, f"README line {shown.line}: `posync {shown.text}` names no posync command"
    assert not isinstance(command, click.Group) or len(path) == len(shown.words), (
        f"README line {shown.line}: `posync {shown.text}`: {shown.words[len(path)]!r} "
        f"is not a subcommand of `posync {' '.join(path)}`"
    )
    used = {w.split("=", 1)[0] for w in shown.words if w.startswith("-")}
    unknown = used - option_names(command)
    assert not unknown, f"README line {shown.line}: `posync {' '.join(path)}` has no option {sorted(unknown)}"
    # And its help works
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("shown", MAKE, ids=[f"L{c.line}:{c.text}" for c in MAKE])
def test_every_make_target_in_the_readme_exists(shown: Shown) -> None:
    targets = [w for w in shown.words if not w.startswith("-") and "=" not in w]
    assert targets, f"README line {shown.line}: bare `make`"
    for target in targets:
        done = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, f"README line {shown.line}: make {target}: {done.stderr.strip()}"


def test_relative_links_in_the_readme_resolve() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README_TEXT)
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    assert "docs/exports.md" in local and "docs/canonical-order-v1.md" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_the_pinned_cdk_cli_is_the_one_the_readme_names() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert f"aws-cdk@{pinned}" in README_TEXT


def test_every_posync_variable_the_code_reads_is_documented() -> None:
    # Given every POSYNC_* name quoted in the shipped code, the CLI and the CDK app
    names: set[str] = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            names.update(re.findall(r"[\"'`](POSYNC_[A-Z0-9_]*[A-Z0-9])[\"'`]", path.read_text()))
    # plus the per-provider rate limits, built as f"POSYNC_{PROVIDER}_{SUFFIX}"
    names.update(
        f"POSYNC_{p}_{s}"
        for p in ("CLOVER", "POYNT")
        for s in ("TOKEN_RPS", "TOKEN_CONCURRENCY", "APP_RPS", "APP_CONCURRENCY")
    )
    assert len(names) > 25
    # Then the README's configuration reference names each of them
    documented = set(re.findall(r"`(POSYNC_[A-Z0-9_]+)`", README_TEXT))
    assert sorted(names - documented) == []
