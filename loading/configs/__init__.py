"""Configs of the supported layouts, shipped so that nothing is fetched from a hub.

Written from the public FLUX.1-dev / FLUX.1-schnell repositories (transformer, vae,
text_encoder = CLIP-L, text_encoder_2 = T5-XXL v1.1 encoder, scheduler). Sizes that a
checkpoint's shapes reveal are read from the checkpoint and override these; the rest
(activations, epsilons, VAE scaling/shift factors, scheduler shifts) comes from here.
"""
import json
import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
NAMES = ("flux1-dev_transformer", "flux1-schnell_transformer", "flux_vae", "clip_l", "t5xxl",
         "flux1-dev_scheduler", "flux1-schnell_scheduler")


def load(name: str) -> dict:
    """A fresh copy of the shipped config ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise KeyError(f"no shipped config '{name}'; known: {', '.join(NAMES)}")
    with open(os.path.join(CONFIG_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)
