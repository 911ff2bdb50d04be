"""A gitleaks-style scan of every tracked file: no private key, cloud key or live token is committed.

The sandboxes generate their keys and tokens at run time, so nothing here needs an allow-list
beyond the obviously fake test credentials ("testing").
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Patterns are assembled from pieces so that this file does not match itself.
RULES: dict[str, re.Pattern[str]] = {
    "private key block": re.compile("-----BEGIN (RSA |EC |OPENSSH |ENCRYPTED |)" + "PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}\b"),
    "Slack/GitHub token": re.compile(r"\b(xox[baprs]-[0-9A-Za-z-]{10,}|gh[pousr]_[0-9A-Za-z]{36})\b"),
    "JWT literal": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "hard-coded client secret": re.compile(
        r"(?i)\b(client_secret|clientSecret|webhook_secret)\b\s*[=:]\s*['\"][A-Za-z0-9_\-]{24,}['\"]"
    ),
}
SKIP_SUFFIXES = (".lock", ".png", ".gz", ".zip")


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p and not p.endswith(SKIP_SUFFIXES)]


def scan(text: str) -> list[str]:
    return [name for name, rule in RULES.items() if rule.search(text)]


def test_the_rules_catch_what_they_are_for() -> None:
    # Given samples of each kind of leak (assembled at run time)
    samples = {
        "private key block": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIE",
        "AWS access key id": "key = AKIA" + "ABCDEFGHIJKLMNOP",
        "JWT literal": "eyJhbGciOiJSUzI1NiJ9" + ".eyJzdWIiOiJ1cm46YWlkIn0" + ".c2lnbmF0dXJlc2lnbmF0dXJl",
        "hard-coded client secret": 'client_secret = "' + "a" * 30 + '"',
    }
    for name, sample in samples.items():
        assert name in scan(sample), name


def test_no_tracked_file_contains_a_secret() -> None:
    findings = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        findings += [f"{path.relative_to(ROOT)}: {name}" for name in scan(text)]
    assert findings == []
