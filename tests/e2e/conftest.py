"""A real ComfyUI server, headless on a free loopback port, with this pack linked into a fresh
custom_nodes folder (host installed by scripts/setup_host.sh)."""
import os

import pytest

from comfy_host import ComfyServer, comfy_dir

#: test-only nodes (a tiny native Flux MODEL, CONDITIONING of any width, a MODEL that is not
#: Flux), installed into the test host only and never shipped with the pack
TEST_NODES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "realiz3d_test_nodes")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not os.path.isfile(os.path.join(comfy_dir(), "main.py")):
        pytest.fail(f"no ComfyUI host at {comfy_dir()}: run scripts/setup_host.sh (scripts/test.sh does)")
    base = tmp_path_factory.mktemp("comfy_base")
    srv = ComfyServer(str(base), extra_nodes=[TEST_NODES]).start()
    yield srv
    srv.stop()
