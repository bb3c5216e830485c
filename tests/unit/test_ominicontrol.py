"""OminiControl's spatial LoRAs through the pack (SPEC.md section 5): files in the published key
layout are recognised and named by their task, and the pack's sampler on both model paths
equals an independent implementation of OminiControl's spatial generate (tests/unit/
ominicontrol_reference.py) on the final latents, for one condition and for two (depth + canny)."""
import copy
import os

import pytest
import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict

from capture import Capture
from ominicontrol_reference import generate as reference_generate, ominicontrol_mask
from realiz3d.engine.control_formats import (OMINICONTROL, REALIZ3D, describe_control_lora, read_file_metadata,
                                             spatial_layout, task_from_name)
from realiz3d.engine.lora_files import attach_lora, read_lora, side_scales
from realiz3d.loading import tiny_components
from realiz3d.sampling.realiz3d_layout import control_mask
from realiz3d.sampling.realiz3d_sampler import ControlSet, Realiz3DSettings, sample_realiz3d
from realiz3d.sampling.runtime import TextConditioning, runtime_from_pipeline

#: OminiControl's spatial training config's peft target_modules (its key layout), as published
OMINI_TARGETS = (r"(.*x_embedder|.*(?<!single_)transformer_blocks\.[0-9]+\.norm1\.linear"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.attn\.to_[kqv]"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.attn\.to_out\.0"
                 r"|.*(?<!single_)transformer_blocks\.[0-9]+\.ff\.net\.2"
                 r"|.*single_transformer_blocks\.[0-9]+\.norm\.linear|.*single_transformer_blocks\.[0-9]+\.proj_mlp"
                 r"|.*single_transformer_blocks\.[0-9]+\.proj_out|.*single_transformer_blocks\.[0-9]+\.attn.to_[kqv])")
SIZE = 32


def write_omini_lora(transformer, path, seed, std=0.05):
    """A LoRA file as OminiControl's trainer writes it: rank 4, alpha 4, its target modules,
    saved by FluxPipeline.save_lora_weights; lora_B random so that it has an effect."""
    donor = copy.deepcopy(transformer)
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=OMINI_TARGETS))
    g = torch.Generator().manual_seed(seed)
    for n, p in donor.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * std
    FluxPipeline.save_lora_weights(os.path.dirname(path), transformer_lora_layers=get_peft_model_state_dict(donor),
                                   weight_name=os.path.basename(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("omini"))
    pipe = tiny_components(seed=0, tokenizer_dir=os.path.join(folder, "tok")).pipeline()
    base = copy.deepcopy(pipe.transformer)                   # no adapter: for the native model
    depth = write_omini_lora(pipe.transformer, os.path.join(folder, "experimental", "depth.safetensors"), 1)
    canny = write_omini_lora(pipe.transformer, os.path.join(folder, "experimental", "canny.safetensors"), 2)
    ref = FluxPipeline(scheduler=copy.deepcopy(pipe.scheduler), vae=pipe.vae, text_encoder=pipe.text_encoder,
                       tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                       transformer=copy.deepcopy(pipe.transformer))
    ref.load_lora_weights(depth, adapter_name="depth")
    ref.load_lora_weights(canny, adapter_name="canny")
    ref.transformer.set_adapters(["depth", "canny"])
    emb, pooled, text_ids = pipe.encode_prompt(prompt="a red chair", prompt_2=None, device="cpu",
                                               num_images_per_prompt=1, max_sequence_length=16)
    g = torch.Generator().manual_seed(7)
    images = {"depth": torch.rand(SIZE, SIZE, 3, generator=g), "canny": (torch.rand(SIZE, SIZE, 3, generator=g) > 0.8).float()}
    return dict(folder=folder, pipe=pipe, base=base, ref=ref, depth=depth, canny=canny, text=(emb, pooled, text_ids),
                images=images)


def settings(seed=3, steps=3):
    return Realiz3DSettings(steps=steps, width=SIZE, height=SIZE, seed=seed, guidance=3.5, max_sequence_length=16)


def test_published_layout_is_recognised_and_named_by_its_task(tiny):
    state = read_lora(tiny["depth"], "lora")
    modules = {k.split(".lora_A.")[0].removeprefix("transformer.") for k in state if ".lora_A." in k}
    assert "x_embedder" in modules and "transformer_blocks.0.norm1.linear" in modules
    assert "single_transformer_blocks.1.proj_out" in modules and "proj_out" not in modules
    assert not any("context" in m or "add_" in m for m in modules)          # the text path is untouched
    assert spatial_layout(modules)
    info = describe_control_lora(state, "experimental/depth.safetensors", read_file_metadata(tiny["depth"]))
    assert (info.convention, info.task, info.rank, info.control_map) == (OMINICONTROL, "depth", 4, "depth (inverse)")
    assert info.independent and info.condition_latents == "sample if possible"
    canny = describe_control_lora(read_lora(tiny["canny"], "lora"), "canny.safetensors")
    assert (canny.task, canny.control_map) == ("canny", "canny")
    # the same keys without a task in the name, or written by the pack, are the pack's convention
    assert describe_control_lora(state, "my_lora.safetensors").convention == REALIZ3D
    assert describe_control_lora(state, "depth.safetensors", {"realiz3d_lora": "control"}).convention == REALIZ3D
    assert describe_control_lora(state, "my_lora.safetensors", convention=OMINICONTROL).convention == OMINICONTROL
    # a LoRA on other modules (here: only the attention) is not the spatial layout
    partial = {k: v for k, v in state.items() if ".attn.to_q." in k}
    assert not spatial_layout({k.split(".lora_A.")[0].removeprefix("transformer.") for k in partial if ".lora_A." in k})
    assert task_from_name("omini_canny_v1.safetensors") == "canny" and task_from_name("depth_canny.safetensors") is None


def test_group_mask_is_ominicontrols_for_one_and_two_conditions():
    assert control_mask([1], [True]) is None                       # one condition: the full mask
    m = control_mask([1, 1], [True, True])
    assert torch.equal(m, ominicontrol_mask(2))
    assert m[2].tolist() == [True, True, True, False] and m[3].tolist() == [True, True, False, True]
    assert torch.equal(control_mask([2], [True]), ominicontrol_mask(2))      # two images of one OminiControl LoRA
    assert control_mask([2], [False]) is None                      # the pack's own maps see each other
    own_and_omini = control_mask([2, 1], [False, True])
    assert own_and_omini[2, 3] and own_and_omini[3, 2] and not own_and_omini[2, 4] and not own_and_omini[4, 3]


def _pack_run(rt, tiny, tasks, adapters):
    emb, pooled, _ = tiny["text"]
    sets = [ControlSet(tiny["images"][t][None], (adapters[t],), "sample if possible", True, t) for t in tasks]
    sample_realiz3d(rt, TextConditioning(emb, pooled), None, settings(), control_sets=sets, side=adapters.get("side"))
    return rt.codec.decoded[-1]


def _reference(tiny, tasks):
    emb, pooled, text_ids = tiny["text"]
    packed = reference_generate(tiny["ref"], emb, pooled, text_ids, [(tiny["images"][t], t) for t in tasks],
                                SIZE, SIZE, 3, 3.5, seed=3)
    return FluxPipeline._unpack_latents(packed, SIZE, SIZE, tiny["ref"].vae_scale_factor)   # [1, 16, h, w]


@pytest.mark.parametrize("tasks", [("depth",), ("depth", "canny")])
def test_pack_sampler_equals_independent_ominicontrol_generate(tiny, tasks):
    pipe = tiny["pipe"]
    adapters = {t: attach_lora(pipe.transformer, tiny[t], t, "lora", unit_scale=True) for t in ("depth", "canny")}
    rt = runtime_from_pipeline(pipe)
    rt.codec = Capture(rt.codec)
    ours = _pack_run(rt, tiny, tasks, adapters)
    ref = _reference(tiny, tasks)
    assert ours.shape == ref.shape == (1, 16, SIZE // 8, SIZE // 8)
    print(f"{'+'.join(tasks)}: max |pack - reference| on the final latents = {(ours - ref).abs().max().item():.2e}")
    assert (ours - ref).abs().max().item() <= 1e-4
    # not a vacuous equality: the conditions' LoRA and the mask change the result
    no_lora = {t: None for t in tasks}
    rt.codec.decoded.clear()
    emb, pooled, _ = tiny["text"]
    sample_realiz3d(rt, TextConditioning(emb, pooled), None, settings(),
                    control_sets=[ControlSet(tiny["images"][t][None], (), "sample if possible", True) for t in no_lora])
    assert (rt.codec.decoded[-1] - ref).abs().max().item() > 1e-3
    if len(tasks) == 2:
        rt.codec.decoded.clear()
        sets = [ControlSet(tiny["images"][t][None], (adapters[t],), "sample if possible", False) for t in tasks]
        both = torch.cat([s.images for s in sets])        # one set whose branches see each other: another mask
        sample_realiz3d(rt, TextConditioning(emb, pooled), None, settings(),
                        control_sets=[ControlSet(both, (adapters["depth"],), "sample if possible", False)])
        assert (rt.codec.decoded[-1] - ref).abs().max().item() > 1e-3


def test_posterior_sample_not_mean(tiny):
    """The conditions are posterior samples: with the mean the result differs from the reference."""
    pipe = tiny["pipe"]
    adapter = attach_lora(pipe.transformer, tiny["depth"], "depth", "lora", unit_scale=True)
    rt = runtime_from_pipeline(pipe)
    rt.codec = Capture(rt.codec)
    emb, pooled, _ = tiny["text"]
    sample_realiz3d(rt, TextConditioning(emb, pooled), None, settings(),
                    control_sets=[ControlSet(tiny["images"]["depth"][None], (adapter,), "mean", True)])
    assert (rt.codec.decoded[-1] - _reference(tiny, ("depth",))).abs().max().item() > 1e-5


def test_lora_applies_only_to_condition_branches(tiny, monkeypatch):
    import realiz3d.sampling.realiz3d_sampler as sampler
    pipe = tiny["pipe"]
    adapter = attach_lora(pipe.transformer, tiny["depth"], "depth", "lora", unit_scale=True)
    calls = []

    class Recording(sampler.FluxEngine):
        def forward(self, branches, mask, *args, **kwargs):
            calls.append((list(branches), mask))
            return super().forward(branches, mask, *args, **kwargs)

    monkeypatch.setattr(sampler, "FluxEngine", Recording)
    emb, pooled, _ = tiny["text"]
    sample_realiz3d(pipe, TextConditioning(emb, pooled), None, settings(steps=2),
                    control_sets=[ControlSet(tiny["images"]["depth"][None], (adapter,), "sample if possible", True)])
    assert len(calls) == 2
    for (text, target, cond), mask in calls:
        assert text.adapters == () and target.adapters == () and cond.adapters == (adapter,)
        assert float(cond.timestep.max()) == 0.0 and float(cond.guidance.max()) == 1.0
        assert torch.equal(cond.ids, target.ids) and mask is None


def test_strength_scales_the_update_and_unit_scale_ignores_the_files_alpha(tiny, tmp_path):
    """OminiControl's generate runs every adapter at scale 1; strength (ours) multiplies it."""
    from safetensors.torch import load_file, save_file
    state = load_file(tiny["depth"])
    for k in [k for k in state if ".lora_A." in k]:
        state[k.replace(".lora_A.weight", ".alpha")] = torch.tensor(8.0)     # alpha 8 on rank 4: scale 2
    path = str(tmp_path / "depth_alpha.safetensors")
    save_file(state, path)
    read = read_lora(path, "lora")
    assert set(side_scales(read).values()) == {2.0}
    assert side_scales(read, 0.5, unit_scale=True) == 0.5
    pipe = tiny["pipe"]
    a = attach_lora(pipe.transformer, path, "d", "lora", strength=0.5, unit_scale=True)
    layer = pipe.transformer.x_embedder
    assert layer.scaling[a] == 0.5


def test_native_model_equals_the_reference(tiny):
    """The same generate on ComfyUI's MODEL (BFL layout), the LoRAs beside it."""
    from comfy_native import import_comfy, native_model
    import_comfy()
    from realiz3d.engine.side_lora import SideLoRAs
    from realiz3d.nodes import native
    from realiz3d.nodes.flux_nodes import FluxModel

    patcher = native_model(tiny["base"])
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    rt = native.runtime(patcher, pack)
    rt.codec = Capture(rt.codec)
    layers, side = rt.layers, SideLoRAs()
    for t in ("depth", "canny"):
        st = read_lora(tiny[t], "lora")
        side.add(t, st, layers.module_of, layers.hidden, "lora", t, scale=side_scales(st, unit_scale=True))
    ours = _pack_run(rt, tiny, ("depth", "canny"), {"depth": "depth", "canny": "canny", "side": side})
    diff = (ours - _reference(tiny, ("depth", "canny"))).abs().max().item()
    print(f"native MODEL, depth+canny: max |pack - reference| on the final latents = {diff:.2e}")
    assert diff <= 1e-4
