"""Regenerate example_workflows/*.json (UI format) from example_workflows/api/*.json.

Starts the headless host (scripts/setup_host.sh first) to read the live node schemas.
Usage: .cache/host/venv/bin/python scripts/make_ui_workflows.py
"""
import glob
import json
import os
import tempfile

from comfy_host import ROOT, ComfyServer
from workflow_format import api_to_ui


def main():
    with tempfile.TemporaryDirectory() as base, ComfyServer(base) as server:
        info = server.get("/object_info")
        for path in sorted(glob.glob(os.path.join(ROOT, "example_workflows", "api", "*.json"))):
            with open(path) as f:
                ui = api_to_ui(json.load(f), info)
            out = os.path.join(ROOT, "example_workflows", os.path.basename(path))
            with open(out, "w") as f:
                json.dump(ui, f, indent=1)
                f.write("\n")
            print("wrote", os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
