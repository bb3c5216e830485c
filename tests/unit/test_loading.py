"""Loading Flux-family models offline: the diffusers folder, ComfyUI-style single files (BFL,
ldm and transformers layouts), key conversion both ways, and the component cache.
Bad input is in test_loading_errors.py."""
import json
import os
import shutil
import socket
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from realiz3d.loading import (BFL_PREFIX, ComponentCache, bfl_to_diffusers, diffusers_to_bfl, diffusers_to_ldm_vae,
                              get_or_load, infer_flux_config, ldm_to_diffusers_vae, load_pipeline_folder,
                              load_single_files, load_t5, load_text_encoders, load_transformer, load_vae, make_key, release,
                              release_all, rope_axes, write_tiny_set)
from realiz3d.loading.cache import CACHE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_set(str(tmp_path_factory.mktemp("tiny")), seed=0)


@pytest.fixture(scope="module")
def folder(tiny):
    return load_pipeline_folder(tiny.diffusers_folder)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (HF_HUB_OFFLINE is not trusted alone)."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def transformer_inputs(cfg, seed=0, B=2, N=16, T=7):
    g = torch.Generator().manual_seed(seed)
    r, c = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    return dict(hidden_states=torch.randn(B, N, cfg.in_channels, generator=g),
                encoder_hidden_states=torch.randn(B, T, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(B, cfg.pooled_projection_dim, generator=g),
                timestep=torch.tensor([0.25, 0.8]), guidance=torch.tensor([3.5, 1.0]),
                img_ids=torch.stack([torch.zeros(N), r.flatten().float(), c.flatten().float()], 1),
                txt_ids=torch.zeros(T, 3), return_dict=False)


def test_folder_loads_offline_and_samples(tiny, no_network):
    c = load_pipeline_folder(tiny.diffusers_folder)
    assert type(c.transformer).__name__ == "FluxTransformer2DModel" and c.vae.config.latent_channels == 16
    assert c.scheduler.config.use_dynamic_shifting and c.scheduler.config.max_shift == 1.15
    pipe = c.pipeline()
    run = lambda: pipe("a photo of a red chair", height=64, width=64, num_inference_steps=1, guidance_scale=3.5,
                       output_type="pt", generator=torch.Generator().manual_seed(0)).images
    a, b = run(), run()
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, b)                      # seeded: same image twice
    assert a.std() > 0                            # random weights give a non-constant image


@pytest.mark.parametrize("prefix", [True, False])
def test_bfl_transformer_file_matches_folder(tiny, folder, tmp_path, prefix, no_network):
    path = tiny.transformer
    raw = load_file(path)
    assert all(k.startswith(BFL_PREFIX) for k in raw) and "model.diffusion_model.img_in.weight" in raw
    if not prefix:
        path = str(tmp_path / "no-prefix.safetensors")
        save_file({k[len(BFL_PREFIX):]: v for k, v in raw.items()}, path)
    model = load_transformer(path)
    want = {k: v for k, v in folder.transformer.config.items() if not k.startswith("_")}
    got = {k: v for k, v in model.config.items() if not k.startswith("_")}
    assert got == want
    inputs = transformer_inputs(model.config)
    with torch.no_grad():
        out = model(**inputs)[0]
        ref = folder.transformer(**inputs)[0]
    assert out.shape == (2, 16, 64)
    assert (out - ref).abs().max() <= 1e-6


def test_diffusers_keys_file_loads(folder, tmp_path):
    path = str(tmp_path / "diffusers-keys.safetensors")
    save_file({k: v.contiguous() for k, v in folder.transformer.state_dict().items()}, path)
    model = load_transformer(path)
    for k, v in folder.transformer.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bfl_roundtrip_and_layout(folder):
    sd = folder.transformer.state_dict()
    bfl = diffusers_to_bfl(sd)
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (3 * 128, 128)
    assert bfl["single_blocks.1.linear1.weight"].shape == (3 * 128 + 4 * 128, 128)
    assert "guidance_in.in_layer.weight" in bfl and "time_in.out_layer.bias" in bfl
    half = sd["norm_out.linear.weight"].shape[0] // 2     # BFL's final AdaLN is (shift, scale)
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"][:half], sd["norm_out.linear.weight"][half:])
    back = bfl_to_diffusers(bfl)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert infer_flux_config(bfl) == infer_flux_config(sd)


def test_bfl_mapping_agrees_with_diffusers_converter():
    """Cross-check against diffusers' own converter, which only handles hidden size 3072: a fake
    FLUX.1-sized checkpoint whose tensors are one column wide keeps that cheap."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    g = torch.Generator().manual_seed(0)
    H = 3072
    rows = {"img_in": H, "txt_in": H, "time_in.in_layer": H, "time_in.out_layer": H, "vector_in.in_layer": H,
            "vector_in.out_layer": H, "guidance_in.in_layer": H, "guidance_in.out_layer": H,
            "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 2 * H}
    for blk in ("img", "txt"):
        rows.update({f"double_blocks.0.{blk}_mod.lin": 6 * H, f"double_blocks.0.{blk}_attn.qkv": 3 * H,
                     f"double_blocks.0.{blk}_attn.proj": H, f"double_blocks.0.{blk}_mlp.0": 4 * H,
                     f"double_blocks.0.{blk}_mlp.2": H})
    rows.update({"single_blocks.0.modulation.lin": 3 * H, "single_blocks.0.linear1": 7 * H,
                 "single_blocks.0.linear2": H})
    sd = {}
    for name, n in rows.items():
        sd[f"{BFL_PREFIX}{name}.weight"] = torch.randn(n, 1, generator=g)
        sd[f"{BFL_PREFIX}{name}.bias"] = torch.randn(n, generator=g)
    for norm in ("double_blocks.0.img_attn", "double_blocks.0.txt_attn", "single_blocks.0"):
        for q in ("query_norm", "key_norm"):
            sd[f"{BFL_PREFIX}{norm}.norm.{q}.scale"] = torch.randn(128, generator=g)
    ours = bfl_to_diffusers(dict(sd))
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(sd))
    assert set(ours) == set(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k
    assert diffusers_to_bfl(ours, prefix=BFL_PREFIX).keys() == sd.keys()


def test_rope_axes_rule():
    assert rope_axes(128) == (16, 56, 56)
    assert rope_axes(64) == (16, 24, 24) and rope_axes(32) == (8, 12, 12)
    for d in (32, 48, 64, 96, 256):
        axes = rope_axes(d)
        assert sum(axes) == d and all(a % 2 == 0 and a > 0 for a in axes)


def test_vae_file_matches_folder_and_diffusers_converter(tiny, folder):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    raw = load_file(tiny.vae)
    assert "decoder.up.3.upsample.conv.weight" in raw and "decoder.up.0.upsample.conv.weight" not in raw
    assert raw["encoder.mid.attn_1.q.weight"].ndim == 4            # ldm keeps 1x1 convolutions
    theirs = convert_ldm_vae_checkpoint(dict(raw), dict(folder.vae.config))
    ours = ldm_to_diffusers_vae(raw)
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) for k in ours)
    assert diffusers_to_ldm_vae(ours).keys() == raw.keys()
    vae = load_vae(tiny.vae)
    assert vae.config.scaling_factor == 0.3611 and vae.config.shift_factor == 0.1159
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z, z_ref = vae.encode(x).latent_dist.mean, folder.vae.encode(x).latent_dist.mean
        assert z.shape == (1, 16, 8, 8) and (z - z_ref).abs().max() <= 1e-6
        assert (vae.decode(z).sample - folder.vae.decode(z).sample).abs().max() <= 1e-6


def _text_outputs(clip, t5, tok, tok2, prompts=("a photo of the cat", "red house on white background")):
    ids = tok(list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ids2 = tok2(list(prompts), padding="max_length", max_length=32, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        c = clip(ids)
        return c.pooler_output, c.last_hidden_state, t5(ids2)[0]


def test_text_encoder_files_match_folder(tiny, folder, tmp_path):
    # ComfyUI's sd1_tokenizer says model_max_length 8192; CLIP has 77 positions
    tok_dir = str(tmp_path / "clip-tok")
    shutil.copytree(tiny.clip_tokenizer, tok_dir)
    cfg_path = os.path.join(tok_dir, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["model_max_length"] = 8192
    json.dump(cfg, open(cfg_path, "w"))
    clip, t5, tok, tok2 = load_text_encoders(tiny.clip, tiny.t5, clip_tokenizer=tok_dir,
                                             t5_tokenizer=tiny.t5_tokenizer)
    assert tok.model_max_length == 77
    got = _text_outputs(clip, t5, tok, tok2)
    want = _text_outputs(folder.text_encoder, folder.text_encoder_2, folder.tokenizer, folder.tokenizer_2)
    assert got[0].shape == (2, 32) and got[2].shape == (2, 32, 64)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-6
    # the same weights behind ComfyUI's all-in-one prefixes load the same
    p_clip, p_t5 = str(tmp_path / "clip.safetensors"), str(tmp_path / "t5.safetensors")
    save_file({"cond_stage_model.transformer." + k: v for k, v in load_file(tiny.clip).items()}, p_clip)
    save_file({"text_encoders.t5xxl.transformer." + k: v for k, v in load_file(tiny.t5).items()}, p_t5)
    clip2, t52, _, _ = load_text_encoders(p_clip, p_t5)
    for a, b in zip(_text_outputs(clip2, t52, tok, tok2), want):
        assert (a - b).abs().max() <= 1e-6


def test_fp8_file_upcasts_and_bf16_loads(tiny, folder, tmp_path):
    path = str(tmp_path / "tiny-flux-fp8.safetensors")
    raw = load_file(tiny.transformer)
    save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in raw.items()}, path)
    model = load_transformer(path, dtype="fp32")
    w = model.state_dict()["transformer_blocks.0.attn.to_q.weight"]
    ref = folder.transformer.state_dict()["transformer_blocks.0.attn.to_q.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, ref.to(torch.float8_e4m3fn).float())      # exactly the stored fp8 values
    assert not torch.equal(w, ref)
    bf = load_transformer(tiny.transformer, dtype="bf16")
    assert {p.dtype for p in bf.parameters()} == {torch.bfloat16}


def test_comfy_scaled_fp8_and_half_precision(tiny, folder, tmp_path):
    """ComfyUI's scaled fp8 files store weight / scale in fp8 plus the scale: the loader multiplies back."""
    raw = load_file(tiny.t5)
    scaled = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for k, v in raw.items():
        if v.ndim == 2 and "SelfAttention.q" in k:
            scale = v.abs().max() / 448.0                # fp8 e4m3's largest value
            scaled[k] = (v / scale).to(torch.float8_e4m3fn)
            scaled[k[: -len("weight")] + "scale_weight"] = scale.reshape(1)
            scaled[k[: -len("weight")] + "scale_input"] = torch.ones(1)
        else:
            scaled[k] = v
    path = str(tmp_path / "t5-scaled-fp8.safetensors")
    save_file(scaled, path)
    t5 = load_t5(path)
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    ref = raw[key]
    got = t5.state_dict()[key]
    assert not torch.equal(got, ref) and (got - ref).abs().max() <= 0.07 * ref.abs().max()
    half = load_t5(tiny.t5, dtype="fp16")
    dtypes = {k: v.dtype for k, v in half.state_dict().items()}
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == torch.float32     # as transformers does
    assert dtypes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"] == torch.float16
    bf = load_pipeline_folder(tiny.diffusers_folder, dtype="bf16")
    assert bf.transformer.dtype == torch.bfloat16 and bf.text_encoder_2.shared.weight.dtype == torch.bfloat16


def test_single_files_build_a_working_pipeline(tiny, folder, no_network):
    c = load_single_files(tiny.transformer, tiny.vae, tiny.clip, tiny.t5, tiny.clip_tokenizer, tiny.t5_tokenizer)
    run = lambda comps: comps.pipeline()("a photo of the cat", height=64, width=64, num_inference_steps=1,
                                         output_type="pt", generator=torch.Generator().manual_seed(1)).images
    assert (run(c) - run(folder)).abs().max() <= 1e-5


def test_cache_loads_once_and_reloads_on_change(tiny, tmp_path):
    cache = ComponentCache()
    path = str(tmp_path / "t.safetensors")
    save_file(load_file(tiny.transformer), path)
    load = lambda: load_transformer(path)
    a = cache.get_or_load("transformer", [path], "fp32", "cpu", load)
    b = cache.get_or_load("transformer", [path], "fp32", "cpu", load)
    assert a is b and cache.load_count == {"transformer": 1}
    c = cache.get_or_load("transformer", [path], "bf16", "cpu", lambda: load_transformer(path, "bf16"))
    assert c is not a and cache.load_count["transformer"] == 2            # dtype is part of the key
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))           # the file was replaced
    d = cache.get_or_load("transformer", [path], "fp32", "cpu", load)
    assert d is not a and cache.load_count["transformer"] == 3
    assert len(cache) == 2                                                # the stale fp32 entry is gone
    assert cache.release(make_key("transformer", [path], "fp32", "cpu"))
    e = cache.get_or_load("transformer", [path], "fp32", "cpu", load)
    assert e is not d and cache.load_count["transformer"] == 4
    assert cache.release_all() == 2 and len(cache) == 0


def test_cache_threads_share_one_load(tiny):
    cache, calls, results = ComponentCache(), [], []
    gate = threading.Event()

    def slow_load():
        calls.append(1)
        gate.wait(5)
        return object()

    threads = [threading.Thread(target=lambda: results.append(
        cache.get_or_load("vae", [tiny.vae], "fp32", "cpu", slow_load))) for _ in range(4)]
    for t in threads:
        t.start()
    threading.Timer(0.2, gate.set).start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 4 and all(r is results[0] for r in results)


def test_process_cache_folder_key_and_release(tiny):
    release_all()
    before = CACHE.load_count.get("folder", 0)
    a = get_or_load("folder", [tiny.diffusers_folder], "fp32", "cpu", lambda: load_pipeline_folder(tiny.diffusers_folder))
    b = get_or_load("folder", [tiny.diffusers_folder], "fp32", "cpu", lambda: load_pipeline_folder(tiny.diffusers_folder))
    assert a is b and CACHE.load_count["folder"] == before + 1
    assert release(make_key("folder", [tiny.diffusers_folder], "fp32", "cpu"))
    assert not release(make_key("folder", [tiny.diffusers_folder], "fp32", "cpu"))
    release_all()


COMFY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     ".cache", "host", "ComfyUI", "comfy")


@pytest.mark.skipif(not os.path.isdir(os.path.join(COMFY, "sd1_tokenizer")), reason="no ComfyUI host installed")
def test_comfyui_tokenizer_folders_load():
    """The real CLIP and T5 tokenizers ComfyUI ships work as tokenizer folders."""
    from realiz3d.loading import load_tokenizers

    tok, tok2 = load_tokenizers(os.path.join(COMFY, "sd1_tokenizer"), os.path.join(COMFY, "text_encoders", "t5_tokenizer"))
    assert tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok2("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]


def test_weak_cache_shares_while_held_and_forgets_after(tmp_path):
    import gc

    from realiz3d.loading import ComponentCache

    class Model:
        pass

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    cache = ComponentCache(weak=True)
    a = cache.get_or_load("m", [str(path)], "fp32", "cpu", Model)
    assert cache.get_or_load("m", [str(path)], "fp32", "cpu", Model) is a and cache.load_count["m"] == 1
    del a
    gc.collect()
    cache.get_or_load("m", [str(path)], "fp32", "cpu", Model)
    assert cache.load_count["m"] == 2          # nobody held it: loaded again


def test_the_vae_never_runs_in_fp16(tiny):
    """fp16 asked for: transformer and text encoders in fp16, the Flux VAE in fp32 (it overflows
    fp16), on both the diffusers-folder and the single-file path; bf16 is kept as asked."""
    from realiz3d.loading import load_pipeline_folder, load_single_files
    from realiz3d.loading.flux_files import load_vae

    folder = load_pipeline_folder(tiny.diffusers_folder, dtype="fp16")
    files = load_single_files(tiny.transformer, tiny.vae, tiny.clip, tiny.t5, clip_tokenizer=tiny.clip_tokenizer,
                              t5_tokenizer=tiny.t5_tokenizer, dtype="fp16")
    for c in (folder, files):
        assert c.transformer.dtype == torch.float16 and c.vae.dtype == torch.float32
    assert load_vae(tiny.vae, "fp16").dtype == torch.float32 and load_vae(tiny.vae, "bf16").dtype == torch.bfloat16
