"""Shared helpers of the browser tests: the ComfyUI host for the front end (this pack only, the
README's model files present as empty placeholders, a few front-end settings) and a page on it."""
import importlib.util
import json
import os
import sys
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from browser_cdp import Browser  # noqa: E402
from comfy_host import ROOT, ComfyServer, comfy_dir  # noqa: E402

#: which host these tests run on (scripts/test.sh sets REALIZ3D_HOST=0.33 for the second host)
HOST = os.environ.get("REALIZ3D_HOST", "0.3.75")
ARTIFACTS = os.path.join(ROOT, "test_artifacts", "browser", HOST)
VIEWPORT = (1920, 1080)

#: front-end settings: the first-run template dialog already seen (a new user gets it on the first
#: page load), and no low-detail drawing of nodes when a whole template is fitted to the viewport
#: (so the screenshots show the nodes' text)
SETTINGS = {"LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.TutorialCompleted": True}


def _expected_model_files():
    """The model files a user who followed the README has (tests/e2e/test_templates.py's list):
    placed as empty files, so the templates' dropdown values are in their option lists and the
    front end flags no missing model (0.33's front end marks such nodes as errors)."""
    spec = importlib.util.spec_from_file_location(
        "_realiz3d_e2e_test_templates", os.path.join(ROOT, "tests", "e2e", "test_templates.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.EXPECTED_FILES


def start_host(base, extra_nodes=()):
    """A started ComfyServer on ``base`` with the placeholder model files and SETTINGS."""
    if not os.path.isfile(os.path.join(comfy_dir(), "main.py")):
        pytest.fail(f"no ComfyUI host at {comfy_dir()}: run scripts/setup_host.sh (scripts/test.sh does)")
    for rel in _expected_model_files():
        path = os.path.join(base, "models", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    srv = ComfyServer(str(base), extra_nodes=extra_nodes).start()
    try:
        for key, value in SETTINGS.items():
            req = urllib.request.Request(f"{srv.url}/api/settings/{key}", data=json.dumps(value).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(req, timeout=30).read()
    except Exception:
        srv.stop()
        raise
    return srv


APP_READY = ("!!(window.app && window.app.graph && window.app.canvas && window.app.extensionManager"
             " && window.app.extensions && window.app.extensions.length > 0)")


def load_page(b, url) -> None:
    """(Re)load ComfyUI's page in browser ``b`` until the app is set up (extensions registered,
    graph ready)."""
    b.navigate(url + "/", timeout=90)
    b.wait_for(APP_READY, timeout=90)


def open_page(chromium, url):
    """A fresh browser on ComfyUI's page, the app set up."""
    b = Browser(chromium, *VIEWPORT, timeout=90).start()
    try:
        b.send("Network.enable")
        load_page(b, url)
    except Exception:
        b.close()
        raise
    return b
