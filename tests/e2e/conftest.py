"""End-to-end fixtures: the local stack with sandboxes, and a real headless Chromium.

- ``e2e_runtime`` (module): a :class:`LocalRuntime` of stage ``e2e`` on free ports with the
  Clover and Poynt sandboxes. Its environment is applied for every test of the module and
  put back when the module ends (``stop()``), so later suites never see it.
- ``browser`` (session): Debian's Chromium (``/usr/bin/chromium``) driven by Playwright,
  headless, with a fresh user-data-dir. When it cannot be launched (not installed, no
  Playwright driver, a sandboxed machine...) every test using it is skipped with the reason.
- ``page`` (function): a new tab; cookies are cleared first, so no test sees another's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from posync_local.runtime import LocalRuntime

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def e2e_runtime() -> Iterator[LocalRuntime]:
    rt = LocalRuntime(api_port=0, aws_port=0, sandbox=True, stage="e2e")
    rt.start()
    try:
        yield rt
    finally:
        rt.stop()  # also restores the environment


@pytest.fixture(autouse=True)
def _e2e_env(request: pytest.FixtureRequest) -> None:
    """Tests that use the runtime run in its environment (another suite may have applied its own)."""
    if "e2e_runtime" in request.fixturenames:
        rt: LocalRuntime = request.getfixturevalue("e2e_runtime")
        rt.apply_env()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A persistent Chromium context on a fresh profile directory (skips with the reason if none)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (`make test` installs Debian's chromium as root)")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"Python Playwright is not installed: {exc}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    manager = sync_playwright()
    try:
        playwright = manager.start()
    except Exception as exc:  # the driver itself failed
        pytest.skip(f"Playwright could not start: {type(exc).__name__}: {str(exc)[:300]}")
    try:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 700},
        )
    except PlaywrightError as exc:
        manager.__exit__(None, None, None)
        pytest.skip(f"Chromium could not be launched: {str(exc).splitlines()[0][:300]}")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context
    finally:
        context.close()
        manager.__exit__(None, None, None)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    browser.clear_cookies()
    tab = browser.new_page()
    try:
        yield tab
    finally:
        tab.close()
