"""The pack on ComfyUI's own Flux MODEL (BFL layout, ComfyUI's layers and ops): equal to
ComfyUI's forward, equal to the diffusers layout on the same weights for both samplers, fp8
kept in fp8, the shared MODEL untouched, shifters inside ComfyUI's sampler, and bad input."""
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from capture import Capture
from comfy_native import import_comfy, native_model
from realiz3d.adapters import DomainShifters, ShifterConfig, make_schedule
from realiz3d.adapters.block_patches import ShiftPatches
from realiz3d.engine import Branch, FluxEngine
from realiz3d.engine.bfl_layers import BFLFluxLayers
from realiz3d.engine.lora_files import attach_lora
from realiz3d.loading import tiny_components
from realiz3d.refany3d import RefAny3DSettings, attach_refany3d, sample
from realiz3d.refany3d.layout import adapters as refany3d_adapters, domain_tags, group_mask
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d
from realiz3d.renderers import InputError
from realiz3d.sampling.flow import initial_noise, pack_latents, unpack_latents
from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d
from realiz3d.sampling.runtime import DiffusersCodec, HostCodec, TextConditioning



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import_comfy()
    folder = str(tmp_path_factory.mktemp("native"))
    pipe = tiny_components(seed=0, tokenizer_dir=os.path.join(folder, "tok")).pipeline()
    paths = write_tiny_refany3d(os.path.join(folder, "refany3d"), pipe.transformer, seed=10)
    control = write_tiny_refany3d(os.path.join(folder, "control"), pipe.transformer, seed=3)[0]
    patcher = native_model(pipe.transformer)          # before any adapter is injected into the twin
    patcher8 = native_model(pipe.transformer, torch.float8_e4m3fn, torch.float32)
    return dict(folder=folder, pipe=pipe, patcher=patcher, patcher8=patcher8, paths=paths, control=control)


def node_native():
    import_comfy()
    from realiz3d.nodes import native
    from realiz3d.nodes.flux_nodes import FluxModel
    return native, FluxModel


def stored_dtype(weight) -> torch.dtype:
    """The dtype a weight is kept in (0.33 wraps quantised weights in a tensor subclass whose
    ``dtype`` is the logical one and ``storage_dtype`` the stored one)."""
    return getattr(weight, "storage_dtype", weight.dtype)


def runtimes(tiny):
    """(native runtime on the ComfyUI MODEL, runtime on the diffusers twin), both capturing."""
    native, FluxModel = node_native()
    from realiz3d.sampling.runtime import runtime_from_pipeline
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    rt_native = native.runtime(tiny["patcher"], pack)            # ComfyUI's MODEL, the same VAE
    rt_native.codec = Capture(rt_native.codec)
    rt_pipe = runtime_from_pipeline(tiny["pipe"])
    rt_pipe.codec = Capture(rt_pipe.codec)
    return rt_native, rt_pipe


def text(tiny, batch=1):
    emb, pooled, _ = tiny["pipe"].encode_prompt(prompt="a red box", prompt_2=None, device="cpu",
                                                num_images_per_prompt=1, max_sequence_length=16)
    return TextConditioning(emb, pooled)


def views(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, size, 3, generator=g), torch.rand(n, size, size, 3, generator=g)


def test_native_engine_equals_comfy_forward(tiny):
    """No branches beyond text + image: the engine on ComfyUI's module equals ComfyUI's forward."""
    dm = tiny["patcher"].model.diffusion_model
    g = torch.Generator().manual_seed(1)
    B, h, w, n = 2, 8, 12, 7
    x = torch.randn(B, 16, h, w, generator=g)
    ctx, y = torch.randn(B, n, 64, generator=g), torch.randn(B, 32, generator=g)
    t, guid = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 2.0])
    with torch.no_grad():
        ref = dm(x, t, ctx, y=y, guidance=guid)
        _, ids = initial_noise(B, 16, h * 8, w * 8, torch.float32, "cpu", torch.Generator().manual_seed(0))
        out = FluxEngine(BFLFluxLayers(dm))([Branch(ctx, torch.zeros(n, 3), t, guid, is_text=True),
                                             Branch(pack_latents(x), ids, t, guid)], None, y)[1]
    assert (unpack_latents(out, h * 8, w * 8) - ref).abs().max() <= 1e-5


def test_pack_and_noise_match_diffusers(tiny):
    pipe = tiny["pipe"]
    ours, ids = initial_noise(2, 16, 48, 32, torch.float32, "cpu", torch.Generator().manual_seed(5))
    theirs, their_ids = pipe.prepare_latents(2, 16, 48, 32, torch.float32, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(ours, theirs) and torch.equal(ids, their_ids)
    assert torch.equal(unpack_latents(ours, 48, 32), pipe._unpack_latents(ours, 48, 32, 8))


def test_side_loras_equal_peft_adapters_per_branch(tiny):
    """RefAny3D's published-format LoRAs beside ComfyUI's fused layers equal peft on diffusers'."""
    pipe, dm = tiny["pipe"], tiny["patcher"].model.diffusion_model
    w_native = attach_refany3d(dm, *tiny["paths"])
    w_pipe = attach_refany3d(pipe.transformer, *tiny["paths"])
    g = torch.Generator().manual_seed(2)
    n_views, tok = 2, 16
    ids = torch.zeros(tok, 3)
    ids[:, 2] = torch.arange(tok)
    t, guid = torch.tensor([0.6]), torch.tensor([3.5])

    def branches(weights):
        gg = torch.Generator().manual_seed(3)
        out = [Branch(torch.randn(1, 5, 64, generator=gg), torch.zeros(5, 3), t, guid, is_text=True)]
        for k, (a, d) in enumerate(zip(refany3d_adapters(n_views)[1:], domain_tags(n_views)[1:])):
            out.append(Branch(torch.randn(1, tok, 64, generator=gg), ids, t if k < 2 else torch.zeros(1), guid,
                              weights.resolve(a), d))
        return out

    pooled = torch.randn(1, 32, generator=g)
    L = BFLFluxLayers(dm, side=w_native.side)
    a = FluxEngine(L, w_native.domain_embedder)(branches(w_native), group_mask(n_views), pooled)
    b = FluxEngine(pipe.transformer, w_pipe.domain_embedder)(branches(w_pipe), group_mask(n_views), pooled)
    no_lora = [Branch(x.tokens, x.ids, x.timestep, x.guidance, (), x.domain, x.is_text) for x in branches(w_native)]
    base = FluxEngine(BFLFluxLayers(dm), w_native.domain_embedder)(no_lora, group_mask(n_views), pooled)
    for i in a:
        assert (a[i] - b[i]).abs().max() <= 1e-5
    assert (a[3] - base[3]).abs().max() > 1e-3          # the LoRAs act (the comparison is not vacuous)


def test_refany3d_on_native_model_equals_diffusers_layout(tiny):
    rt_native, rt_pipe = runtimes(tiny)
    w_native = attach_refany3d(tiny["patcher"].model.diffusion_model, *tiny["paths"])
    w_pipe = attach_refany3d(tiny["pipe"].transformer, *tiny["paths"])
    s = RefAny3DSettings(steps=3, width=32, height=48, seed=3, image_cfg=2.0, condition_latents="mean",
                         max_sequence_length=16)
    rgb, pts = views()
    sample(rt_native, w_native, text(tiny), rgb, pts, s)
    sample(rt_pipe, w_pipe, text(tiny), rgb, pts, s)
    for a, b in zip(rt_native.codec.decoded, rt_pipe.codec.decoded):       # final latents of both targets
        assert a.shape == (1, 16, 6, 4) and (a - b).abs().max() <= 1e-4


def test_realiz3d_on_native_model_equals_diffusers_layout(tiny):
    native, _ = node_native()
    rt_native, rt_pipe = runtimes(tiny)
    pipe = tiny["pipe"]
    from realiz3d.engine.lora_files import read_lora
    from realiz3d.engine.side_lora import SideLoRAs
    layers = rt_native.layers
    side = SideLoRAs()
    side.add("control", read_lora(tiny["control"], "lora"), layers.module_of, layers.hidden, "lora", "control")
    adapter = attach_lora(pipe.transformer, tiny["control"], "control", "lora")
    torch.manual_seed(4)
    shifters = DomainShifters(ShifterConfig.for_transformer(pipe.transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    schedule = make_schedule("layer-aware", k_layers=2)
    s = Realiz3DSettings(steps=3, width=32, height=32, seed=1, max_sequence_length=16)
    controls = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    sample_realiz3d(rt_native, text(tiny), controls, s, ("control",), shifters, schedule, side=side)
    sample_realiz3d(rt_pipe, text(tiny), controls, s, (adapter,), shifters, schedule)
    a, b = rt_native.codec.decoded[-1], rt_pipe.codec.decoded[-1]
    assert (a - b).abs().max() <= 1e-4


def test_fp8_weights_stay_fp8_and_sample_within_fp8_tolerance(tiny):
    native, FluxModel = node_native()
    p8 = tiny["patcher8"]
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    rt8, rt32 = native.runtime(p8, pack), native.runtime(tiny["patcher"], pack)
    assert rt8.layers.dtype == torch.float32                  # ComfyUI's manual-cast dtype
    rt8.codec, rt32.codec = Capture(rt8.codec), Capture(rt32.codec)
    dm = p8.model.diffusion_model
    w8 = attach_refany3d(dm, *tiny["paths"])
    w32 = attach_refany3d(tiny["patcher"].model.diffusion_model, *tiny["paths"])
    s = RefAny3DSettings(steps=2, width=32, height=32, seed=3, condition_latents="mean", max_sequence_length=16)
    rgb, pts = views()
    sample(rt8, w8, text(tiny), rgb, pts, s)
    sample(rt32, w32, text(tiny), rgb, pts, s)
    linears = [m for m in dm.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(stored_dtype(m.weight) == torch.float8_e4m3fn for m in linears)   # never upcast
    a, b = rt8.codec.decoded[0], rt32.codec.decoded[0]
    rel = float((a - b).abs().mean() / b.abs().mean())
    assert 0 < rel < 0.1, rel                                 # fp8 rounding, not a different computation


def test_comfy_sampler_output_unchanged_by_a_refany3d_run(tiny):
    """The MODEL other nodes share: a KSampler-style sample before and after is bit-identical."""
    comfy = import_comfy()
    native, FluxModel = node_native()
    patcher = tiny["patcher"]
    emb, pooled = text(tiny).embeds, text(tiny).pooled
    positive = [[emb, {"pooled_output": pooled, "guidance": 3.5}]]
    latent = torch.zeros(1, 16, 4, 4)
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))

    def ksample():
        return comfy.sample.sample(patcher, noise, 2, 1.0, "euler", "simple", positive, positive, latent, seed=0)

    before = ksample()
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    rgb, pts = views()
    sample(native.runtime(patcher, pack), attach_refany3d(patcher.model.diffusion_model, *tiny["paths"]),
           text(tiny), rgb, pts, RefAny3DSettings(steps=2, width=32, height=32, condition_latents="mean",
                                                  max_sequence_length=16))
    assert torch.equal(before, ksample())


def test_apply_domain_shifter_inside_comfy_forward(tiny):
    """ShiftPatches in ComfyUI's own forward equal the engine with the same shifts."""
    patcher = tiny["patcher"]
    dm = patcher.model.diffusion_model
    torch.manual_seed(6)
    shifters = DomainShifters(ShifterConfig.for_transformer(dm, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    x, ctx, y = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 32, generator=g)
    t, guid = torch.tensor([0.5]), torch.tensor([3.5])
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    _, ids = initial_noise(1, 16, 64, 64, torch.float32, "cpu", torch.Generator())

    def comfy_forward(schedule):
        patches = ShiftPatches(shifters, schedule).patches()
        opts = {"patches_replace": {"dit": patches}, "sample_sigmas": sigmas, "sigmas": t}
        with torch.no_grad():
            return pack_latents(dm(x, t, ctx, y=y, guidance=guid, transformer_options=opts))

    def engine(schedule):
        n = shifters.cfg.num_blocks
        domains = [shifters.domain_index(d) for d in schedule.domains(1, 2, n)]
        return FluxEngine(BFLFluxLayers(dm), shifters=shifters)(
            [Branch(ctx, torch.zeros(5, 3), t, guid, is_text=True),
             Branch(pack_latents(x), ids, t, guid, block_domains=domains)], None, y)[1]

    for params in ({"preset": "synthetic"}, {"preset": "layer-aware", "k_layers": 3},
                   {"preset": "step-switch", "switch_fraction": 0.6}):
        sched = make_schedule(num_blocks=shifters.cfg.num_blocks, num_steps=2, **params)
        assert (comfy_forward(params) - engine(sched)).abs().max() <= 1e-5, params
    with torch.no_grad():
        plain = pack_latents(dm(x, t, ctx, y=y, guidance=guid))
    assert (comfy_forward({"preset": "synthetic"}) - plain).abs().max() > 1e-3


def test_host_codec_equals_the_vae_it_wraps(tiny):
    vae = tiny["pipe"].vae
    img = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))

    def raw_encode(images):
        return vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean

    def raw_decode(lat):
        return (vae.decode(lat, return_dict=False)[0] / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    host = HostCodec(raw_encode, raw_decode, vae.config.shift_factor, vae.config.scaling_factor)
    ours = DiffusersCodec(vae)
    with torch.no_grad():
        assert (host.encode(img, None, "mean") - ours.encode(img, None, "mean")).abs().max() <= 1e-6
        lat = ours.encode(img, None, "mean")
        assert (host.decode(lat) - ours.decode(lat)).abs().max() <= 1e-6
    with pytest.raises(InputError) as e:
        host.encode(img, None, "sample")
    assert e.value.input_name == "condition_latents"


class _NotFluxModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 3)])


class _FakePatcher:
    load_device = torch.device("cpu")

    def __init__(self, module):
        self.model = type("BaseModel", (), {"diffusion_model": module})()


class _FakeVAE:
    latent_channels = 4

    def encode(self, x):
        return x

    def decode(self, x):
        return x


def test_bad_native_inputs_name_the_input(tiny):
    native, FluxModel = node_native()
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    with pytest.raises(InputError) as e:
        native.runtime(_FakePatcher(_NotFluxModule()), pack)            # an SD1.5-like UNet
    assert e.value.input_name == "model" and "not a Flux model" in str(e.value)
    with pytest.raises(InputError) as e:
        native.runtime(tiny["patcher"], _FakeVAE())
    assert e.value.input_name == "vae" and "4-channel" in str(e.value)
    with pytest.raises(InputError) as e:
        native.text_conditioning([[torch.zeros(1, 7, 64), {}]])         # no pooled output: not Flux's CLIP
    assert e.value.input_name == "positive"
    rt = native.runtime(tiny["patcher"], pack)
    wrong = TextConditioning(torch.zeros(1, 7, 768), torch.zeros(1, 1280))   # SDXL-sized text
    rgb, pts = views()
    weights = attach_refany3d(tiny["patcher"].model.diffusion_model, *tiny["paths"])
    with pytest.raises(InputError) as e:
        sample(rt, weights, wrong, rgb, pts, RefAny3DSettings(steps=1, width=32, height=32, condition_latents="mean"))
    assert e.value.input_name == "positive" and "768" in str(e.value)


def test_refany3d_loras_for_another_width_or_damaged_are_refused(tiny, tmp_path):
    dm = tiny["patcher"].model.diffusion_model
    default, coord, embedder = tiny["paths"]
    sd = load_file(default)
    wider = {k: (torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v) for k, v in sd.items()}
    save_file(wider, str(tmp_path / "wide.safetensors"))
    with pytest.raises(InputError) as e:
        attach_refany3d(dm, str(tmp_path / "wide.safetensors"), coord, embedder)
    assert e.value.input_name == "reference_lora" and "another size" in str(e.value)
    key = next(k for k in sd if ".lora_B." in k)
    bad = dict(sd)
    bad[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)
    save_file(bad, str(tmp_path / "rank.safetensors"))
    with pytest.raises(InputError) as e:
        attach_refany3d(dm, default, str(tmp_path / "rank.safetensors"), embedder)
    assert e.value.input_name == "domain_lora" and "ranks disagree" in str(e.value)


def test_a_shift_patched_model_in_the_pack_sampler_is_refused(tiny):
    native, FluxModel = node_native()
    patcher = tiny["patcher"].clone()
    shifters = DomainShifters(ShifterConfig.for_transformer(patcher.model.diffusion_model, rank=2, embed_dim=4))
    for (kind, index), patch in ShiftPatches(shifters).patches().items():
        patcher.set_model_patch_replace(patch, "dit", kind, index)
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    with pytest.raises(InputError) as e:
        native.runtime(patcher, pack)
    assert e.value.input_name == "model" and "Apply Domain Shifter" in str(e.value)
    native.runtime(tiny["patcher"], pack)                    # the unpatched MODEL it was cloned from is fine


def test_weights_reach_the_device_through_comfy_memory_manager(tiny, monkeypatch):
    """Before the denoising loop the MODEL is loaded by ComfyUI's load_models_gpu with the bytes
    the step needs, so ComfyUI can evict its other models first (and partially load this one)."""
    comfy = import_comfy()
    native, FluxModel = node_native()
    from realiz3d.sampling.runtime import step_memory_bytes
    calls = []
    real = comfy.model_management.load_models_gpu

    def record(models, memory_required=0, **kw):
        calls.append((list(models), memory_required))
        return real(models, memory_required=memory_required, **kw)

    monkeypatch.setattr(comfy.model_management, "load_models_gpu", record)
    pack = FluxModel(components=None, pipeline=tiny["pipe"], label="tiny")
    rt = native.runtime(tiny["patcher"], pack)
    rgb, pts = views()
    weights = attach_refany3d(tiny["patcher"].model.diffusion_model, *tiny["paths"])
    sample(rt, weights, text(tiny), rgb, pts, RefAny3DSettings(steps=1, width=32, height=32, condition_latents="mean",
                                                               max_sequence_length=16))
    assert len(calls) == 1 and calls[0][0] == [tiny["patcher"]]
    # text 16 + two targets and 2 x 2 condition views of 32 px: 4 tokens each (2 x 2 patches)
    assert calls[0][1] == step_memory_bytes(rt.layers, [16, 4, 4] + [4] * 4) > 0
