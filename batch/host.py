"""The pack's own headless ComfyUI for a batch run without ``--url`` (scripts/comfy_host.py's
ComfyServer, from the host that scripts/setup_host.sh installs).

The server ignores Ctrl-C (SIGINT is ignored when it starts, and Python keeps an ignored SIGINT
ignored), so a Ctrl-C reaches the runner alone, which can let the running prompt finish; the
runner stops the server when it ends. A small watchdog process (POSIX) stops it too if the runner
dies without cleaning up (``kill -9``), and removes its temporary base folder.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from ..scripts.comfy_host import ComfyServer, comfy_dir

WATCHDOG = """
import os, shutil, signal, sys, time
parent, child, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
while os.getppid() == parent:
    time.sleep(0.5)
    try:
        os.kill(child, 0)
    except OSError:
        sys.exit(0)
try:
    os.kill(child, signal.SIGTERM)
    for _ in range(60):
        time.sleep(0.25)
        os.kill(child, 0)
except OSError:
    pass
if base:
    shutil.rmtree(base, ignore_errors=True)
"""


def install_tiny_models(base: str) -> None:
    """The tiny test model (random, seeded) where the templates look for FLUX.1 once
    scripts/pack_loader.with_pack_loader has swapped ComfyUI's loaders for Load Flux Model
    (models/diffusers/FLUX.1-dev), with tiny RefAny3D weights, a control LoRA and domain shifters
    under the templates' names, as scripts/demo.py installs them. Needs torch (the host's Python)."""
    import torch

    from ..adapters import DomainShifters, ShifterConfig, save_shifters
    from ..loading import load_pipeline_folder, write_tiny_set
    from ..refany3d.tiny_weights import write_tiny_refany3d

    models = os.path.join(base, "models")
    tiny = write_tiny_set(os.path.join(base, "tiny"))
    shutil.copytree(tiny.diffusers_folder, os.path.join(models, "diffusers", "FLUX.1-dev"), dirs_exist_ok=True)
    transformer = load_pipeline_folder(tiny.diffusers_folder).transformer
    write_tiny_refany3d(os.path.join(models, "refany3d"), transformer)
    os.makedirs(os.path.join(models, "loras"), exist_ok=True)
    lora = write_tiny_refany3d(os.path.join(base, "tiny_control"), transformer, seed=4)[0]
    shutil.copy(lora, os.path.join(models, "loras", "realiz3d_normal_control.safetensors"))
    torch.manual_seed(0)
    shifters = DomainShifters(ShifterConfig.for_transformer(transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    os.makedirs(os.path.join(models, "realiz3d_shifters"), exist_ok=True)
    save_shifters(shifters, os.path.join(models, "realiz3d_shifters", "realiz3d_shifters.safetensors"))


class OwnHost:
    """Context manager: a headless ComfyUI on a free loopback port with this pack linked in.
    ``base``: its base folder (a temporary one, removed afterwards, when None); ``tiny``: install
    the tiny test models first."""

    def __init__(self, base: str | None = None, tiny: bool = False, log=print):
        self.base, self.tiny, self.log = base, tiny, log
        self._temp = base is None
        self.server = self._watchdog = None

    def __enter__(self) -> ComfyServer:
        if not os.path.isfile(os.path.join(comfy_dir(), "main.py")):
            raise RuntimeError(f"no ComfyUI host at {comfy_dir()}: run scripts/setup_host.sh, or give --url")
        if self._temp:
            self.base = tempfile.mkdtemp(prefix="realiz3d-batch-host-")
        try:
            self._start()
        except BaseException:
            self.__exit__()                      # nothing left behind: server, watchdog, temporary folder
            raise
        version = self.server.get("/system_stats")["system"].get("comfyui_version", "?")
        self.log(f"ComfyUI {version} running headless at {self.server.url} (base {self.base})")
        return self.server

    def _start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        if self.tiny and not os.path.isdir(os.path.join(self.base, "models", "diffusers", "FLUX.1-dev")):
            self.log("building the tiny test model (random, seeded) ...")
            install_tiny_models(self.base)
        self.log("starting a headless ComfyUI ...")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)     # inherited: Ctrl-C is the runner's
        try:
            self.server = ComfyServer(self.base).start()
            if os.name == "posix":
                self._watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()),
                                                   str(self.server.proc.pid), self.base if self._temp else ""],
                                                  stdin=subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGINT, previous)

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        if self._temp and self.base:
            shutil.rmtree(self.base, ignore_errors=True)
