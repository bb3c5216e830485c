"""Test-only ComfyUI nodes, linked into the test host's custom_nodes by tests/e2e/conftest.py and
never shipped with the pack.

ComfyUI's own loaders refuse tiny models (Flux detection fixes 24 heads; the T5 and CLIP-L
loaders fix their sizes), so these stand in for them with the same output types:
- Tiny Flux MODEL: a BFL-layout single file of any size (the tiny set's transformer) built
  into ComfyUI's Flux exactly as Load Diffusion Model builds FLUX.1-dev, in the dtype asked for.
- Test Conditioning: CONDITIONING of any text width, with or without a pooled output (what
  CLIP Text Encode gives for Flux, or for another model).
- Not-Flux MODEL: a tiny SD1.5 UNet MODEL.
- Test Native Mesh: a MESH from JSON arrays, with uvs, texture, vertex colours and zero-padded
  batches where the host's MESH has them (what a 3D generator emits on 0.33).
- Test Viewer Camera: LOAD3D_CAMERA / LOAD3D_MODEL_INFO from JSON (what Load 3D passes on).
- Tiny Flux CLIP: ComfyUI's own CLIP object (comfy.sd.CLIP with Flux's tokenizers and its
  FluxClipModel class) whose CLIP-L and T5 are shrunk to the tiny model's widths (pooled 32,
  text 64) and seeded: what DualCLIPLoader (type flux) gives, at test size.
- Test Model Digest: a SHA-256 of a MODEL's diffusion-model weights (bytes, keys, dtypes), shown
  as the node's text output; its optional ``after`` input orders it behind another node.
"""
import os
import sys

import torch

import comfy.ldm.flux.model
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import folder_paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))))


def _pack():
    """The pack's library (for its BFL config reader), imported from this checkout."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from pack_import import import_pack
    return import_pack("realiz3d_testcopy")


class TinyFluxModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folder_paths.get_filename_list("diffusion_models"),),
                             "weight_dtype": (["default", "fp8_e4m3fn"],)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "Realiz3D test"

    def load(self, unet_name, weight_dtype):
        pack = _pack()
        from realiz3d_testcopy.loading.bfl_keys import infer_flux_config, strip_prefix
        sd = strip_prefix(comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("diffusion_models",
                                                                                          unet_name)))
        c = infer_flux_config(sd)
        hidden = c["num_attention_heads"] * c["attention_head_dim"]
        config = dict(image_model="flux", in_channels=c["in_channels"] // 4, patch_size=2,
                      out_channels=c["in_channels"] // 4, vec_in_dim=c["pooled_projection_dim"],
                      context_in_dim=c["joint_attention_dim"], hidden_size=hidden, mlp_ratio=4.0,
                      num_heads=c["num_attention_heads"], depth=c["num_layers"],
                      depth_single_blocks=c["num_single_layers"], axes_dim=list(c["axes_dims_rope"]), theta=10000,
                      qkv_bias=True, guidance_embed=c["guidance_embeds"])
        if "txt_ids_dims" in getattr(comfy.ldm.flux.model.FluxParams, "__dataclass_fields__", {}):
            config["txt_ids_dims"] = []          # what ComfyUI 0.33's detection sets for FLUX.1
        mc = comfy.supported_models.Flux(config)
        if weight_dtype == "fp8_e4m3fn":
            mc.set_inference_dtype(torch.float8_e4m3fn, torch.float32)
        else:
            mc.set_inference_dtype(torch.float32, None)
        model = mc.get_model({}, device=torch.device("cpu"))
        store = torch.float8_e4m3fn if weight_dtype == "fp8_e4m3fn" else torch.float32
        model.load_model_weights({k: v.to(store) for k, v in sd.items()}, "")   # the host's own key fixes
        del pack
        return (comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=torch.device("cpu")),)


class TestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                             "text_dim": ("INT", {"default": 64, "min": 1, "max": 8192}),
                             "pooled_dim": ("INT", {"default": 32, "min": 1, "max": 8192}),
                             "pooled": ("BOOLEAN", {"default": True}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "Realiz3D test"

    def make(self, tokens, text_dim, pooled_dim, pooled, seed):
        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, pooled_dim, generator=g)} if pooled else {}
        return ([[torch.randn(1, tokens, text_dim, generator=g), extra]],)


class NotFluxModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "Realiz3D test"

    def load(self):
        config = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                  "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
                  "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
                  "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
                  "num_heads": 2, "num_head_channels": -1, "transformer_depth_output": [1, 1, 1, 1]}
        mc = comfy.supported_models.SD15(config)
        mc.set_inference_dtype(torch.float32, None)
        model = mc.get_model({}, device=torch.device("cpu"))
        return (comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                                 offload_device=torch.device("cpu")),)


NODE_CLASS_MAPPINGS = {"Realiz3DTestTinyFlux": TinyFluxModel, "Realiz3DTestConditioning": TestConditioning,
                       "Realiz3DTestNotFlux": NotFluxModel}


class TestNativeMesh:
    """A native MESH from JSON arrays (vertices, faces and, where the host's MESH takes them, uvs,
    vertex_colors, texture, normals, vertex_counts, face_counts), as a 3D generator would emit it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"spec_json": ("STRING", {"default": "{}", "multiline": True})}}

    RETURN_TYPES = ("MESH",)
    FUNCTION = "make"
    CATEGORY = "Realiz3D test"

    def make(self, spec_json):
        import inspect
        import json

        from comfy_api.latest import Types

        spec = json.loads(spec_json)
        accepted = set(inspect.signature(Types.MESH.__init__).parameters)
        ints = {"faces", "vertex_counts", "face_counts"}
        tensors = {k: torch.tensor(v, dtype=torch.int64 if k in ints else torch.float32) for k, v in spec.items()}
        extra = {k: v for k, v in tensors.items() if k not in ("vertices", "faces") and k in accepted}
        return (Types.MESH(tensors["vertices"], tensors["faces"], **extra),)


class TestViewerCamera:
    """The 3D viewer's camera (LOAD3D_CAMERA) and model transform (LOAD3D_MODEL_INFO) from JSON, as
    Load 3D / Preview 3D pass them on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"camera_json": ("STRING", {"default": "{}", "multiline": True}),
                             "model_json": ("STRING", {"default": "[]", "multiline": True})}}

    RETURN_TYPES = ("LOAD3D_CAMERA", "LOAD3D_MODEL_INFO")
    FUNCTION = "make"
    CATEGORY = "Realiz3D test"

    def make(self, camera_json, model_json):
        import json
        return (json.loads(camera_json), json.loads(model_json))


NODE_CLASS_MAPPINGS.update({"Realiz3DTestNativeMesh": TestNativeMesh, "Realiz3DTestViewerCamera": TestViewerCamera})


class TestModelDigest:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}, "optional": {"after": ("IMAGE",)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "digest"
    OUTPUT_NODE = True
    CATEGORY = "Realiz3D test"

    def digest(self, model, after=None):
        import hashlib

        h = hashlib.sha256()
        for key, value in sorted(model.model.diffusion_model.state_dict().items()):
            h.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"ui": {"text": [h.hexdigest()]}, "result": (h.hexdigest(),)}


NODE_CLASS_MAPPINGS["Realiz3DTestModelDigest"] = TestModelDigest


class TinyFluxClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "Realiz3D test"

    def load(self, seed):
        import json

        import comfy.sd
        import comfy.sd1_clip
        import comfy.text_encoders.flux
        import comfy.text_encoders.t5

        here = os.path.dirname(os.path.realpath(comfy.sd1_clip.__file__))
        with open(os.path.join(here, "sd1_clip_config.json")) as f:
            clip_cfg = {**json.load(f), "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                        "num_hidden_layers": 2, "projection_dim": 32}
        with open(os.path.join(here, "text_encoders", "t5_config_xxl.json")) as f:
            t5_cfg = {**json.load(f), "d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2}

        class TinyClipModel(comfy.text_encoders.flux.FluxClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                torch.nn.Module.__init__(self)
                self.clip_l = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, return_projected_pooled=False,
                                                         textmodel_json_config=clip_cfg,
                                                         model_options={**model_options, "model_name": "clip_l"})
                self.t5xxl = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, textmodel_json_config=t5_cfg,
                                                        special_tokens={"end": 1, "pad": 0},
                                                        model_class=comfy.text_encoders.t5.T5,
                                                        model_options={**model_options, "model_name": "t5xxl"})
                self.dtypes = {dtype}

        class Target:
            params = {}
            clip = TinyClipModel
            tokenizer = comfy.text_encoders.flux.FluxTokenizer

        clip = comfy.sd.CLIP(target=Target(), model_options={"load_device": torch.device("cpu"),
                                                              "offload_device": torch.device("cpu"),
                                                              "initial_device": torch.device("cpu"),
                                                              "dtype": torch.float32})
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in clip.cond_stage_model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        return (clip,)


NODE_CLASS_MAPPINGS["Realiz3DTestTinyFluxClip"] = TinyFluxClip
