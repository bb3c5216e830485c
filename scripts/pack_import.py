"""Import this checkout as the package ``realiz3d`` outside ComfyUI (tests, benchmarks, demo).

ComfyUI imports the pack folder under the folder's own name; the library's modules use
relative imports only, so any package name works. Importing the pack runs nothing heavy.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_pack(name: str = "realiz3d"):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
