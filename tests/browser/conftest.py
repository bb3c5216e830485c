"""The front end in a real browser: a headless ComfyUI with only this pack installed (no
test-only nodes), and headless Chromium (Debian's package, installed by scripts/setup_browser.sh)
driven over the DevTools protocol by the small client in browser_cdp.py.

Skipped, with a line saying so, only when no Chromium is installed.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from browser_cdp import find_chromium  # noqa: E402
from browser_host import open_page, start_host  # noqa: E402


@pytest.fixture(scope="session")
def chromium():
    path = find_chromium()
    if path is None:
        pytest.skip("browser tests skipped: chromium is not installed (scripts/setup_browser.sh installs "
                    "Debian's chromium; it could not here)")
    return path


@pytest.fixture(scope="module")
def frontend_host(tmp_path_factory, chromium):
    srv = start_host(tmp_path_factory.mktemp("comfy_browser"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(chromium, frontend_host):
    b = open_page(chromium, frontend_host.url)
    b.host = frontend_host
    yield b
    b.close()
