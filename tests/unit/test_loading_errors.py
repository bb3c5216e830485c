"""Loading bad input: each a clear InputError that names the input, the file and what is wrong."""
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from realiz3d.loading import (BFL_PREFIX, diffusers_to_bfl, load_pipeline_folder, load_single_files, load_t5,
                              load_text_encoders, load_transformer, load_vae, resolve_dtype, write_tiny_set)
from realiz3d.renderers import InputError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_set(str(tmp_path_factory.mktemp("tiny")), seed=0)


def test_sd_checkpoint_is_named(tmp_path):
    path = str(tmp_path / "sd15.safetensors")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "model.diffusion_model.input_blocks.0.0.bias": torch.zeros(4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}, path)
    with pytest.raises(InputError, match="'sd15.safetensors' is a Stable Diffusion checkpoint, not a Flux "
                                         "transformer") as err:
        load_transformer(path)
    assert err.value.input_name == "transformer"


def test_sdxl_checkpoint_without_prefix_is_named(tmp_path):
    path = str(tmp_path / "sdxl.safetensors")
    save_file({"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(4),
               "input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, path)
    with pytest.raises(InputError, match="Stable Diffusion checkpoint"):
        load_transformer(path)


def test_truncated_file(tiny, tmp_path):
    data = open(tiny.transformer, "rb").read()
    path = str(tmp_path / "half.safetensors")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(InputError, match="'half.safetensors' could not be read: truncated or not a safetensors"):
        load_transformer(path)
    with pytest.raises(InputError, match="truncated"):
        load_vae(path)


def test_wrong_extension_and_missing_file(tiny, tmp_path):
    ckpt = str(tmp_path / "model.ckpt")
    shutil.copy(tiny.transformer, ckpt)
    with pytest.raises(InputError, match="not a weight file; use a .safetensors"):
        load_transformer(ckpt)
    with pytest.raises(InputError, match="does not exist"):
        load_transformer(str(tmp_path / "nope.safetensors"))


def test_pth_only_weights_only(tiny, tmp_path):
    sd = load_file(tiny.transformer)
    good = str(tmp_path / "flux.pth")
    torch.save(sd, good)
    assert load_transformer(good).config.num_layers == 2
    bad = str(tmp_path / "evil.pth")
    torch.save({"img_in.weight": torch.zeros(1), "obj": os.getcwd}, bad)   # a pickled callable
    with pytest.raises(InputError, match="could not be read as a torch state dict"):
        load_transformer(bad)


def test_other_components_in_the_transformer_slot(tiny):
    with pytest.raises(InputError, match="is a VAE, not a Flux transformer"):
        load_transformer(tiny.vae)
    with pytest.raises(InputError, match="is a text encoder"):
        load_transformer(tiny.t5)
    with pytest.raises(InputError, match="is not a T5 encoder.*looks like a CLIP"):
        load_t5(tiny.clip)
    with pytest.raises(InputError, match="is not a VAE"):
        load_vae(tiny.transformer)


def test_sd_vae_latent_channels(tmp_path, tiny):
    sd = load_file(tiny.vae)
    sd["encoder.conv_out.weight"] = sd["encoder.conv_out.weight"][:8]      # 4 latent channels, as SD's
    sd["encoder.conv_out.bias"] = sd["encoder.conv_out.bias"][:8]
    sd["decoder.conv_in.weight"] = sd["decoder.conv_in.weight"][:, :4].contiguous()
    path = str(tmp_path / "sd-vae.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    with pytest.raises(InputError, match="'sd-vae.safetensors' has 4 latent channels; the Flux VAE has 16"):
        load_vae(path)


def test_missing_text_encoder_in_folder(tiny, tmp_path):
    folder = str(tmp_path / "broken-flux")
    shutil.copytree(tiny.diffusers_folder, folder)
    shutil.rmtree(os.path.join(folder, "text_encoder_2"))
    with pytest.raises(InputError, match="'broken-flux' has no text_encoder_2: expected a T5EncoderModel") as err:
        load_pipeline_folder(folder)
    assert err.value.input_name == "model"
    with pytest.raises(InputError, match="no model_index.json"):
        load_pipeline_folder(str(tmp_path))


def _other_transformer(path, hidden_heads=3, joint=96):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    tr = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=64,
                                num_attention_heads=hidden_heads, joint_attention_dim=joint, pooled_projection_dim=32,
                                guidance_embeds=True, axes_dims_rope=(16, 24, 24))
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl(tr.state_dict(), prefix=BFL_PREFIX).items()}, path)


def test_transformer_size_mismatch_named(tiny, tmp_path):
    path = str(tmp_path / "flux-192.safetensors")
    _other_transformer(path)
    assert load_transformer(path).config.num_attention_heads == 3        # fine on its own
    with pytest.raises(InputError, match=r"'tiny-t5.safetensors' gives T5 width \(d_model\) 64, but the transformer "
                                         r"'flux-192.safetensors' has joint_attention_dim 96") as err:
        load_single_files(path, tiny.vae, tiny.clip, tiny.t5)
    assert err.value.input_name == "text_encoder_2"
    with pytest.raises(InputError, match=r"'flux-192.safetensors' does not fit the expected Flux layout: hidden size "
                                         r"192 \(expected 3072\)"):
        load_transformer(path, expected="flux1-dev_transformer")
    with pytest.raises(InputError, match=r"hidden size 192 \(expected 128\)"):
        load_transformer(path, expected={"num_attention_heads": 2, "attention_head_dim": 64})


def test_incomplete_transformer(tiny, tmp_path):
    sd = load_file(tiny.transformer)
    path = str(tmp_path / "partial.safetensors")
    save_file({k: v for k, v in sd.items() if "double_blocks.0." not in k}, path)
    with pytest.raises(InputError, match=r"lacks double_blocks \[0\]"):
        load_transformer(path)
    save_file({**sd, "model.diffusion_model.lora_A.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(InputError, match="not part of a Flux transformer"):
        load_transformer(path)


def test_bad_dtype_and_tokenizer_folder(tiny, tmp_path):
    with pytest.raises(InputError, match="'fp64' is not a compute dtype"):
        resolve_dtype("fp64")
    with pytest.raises(InputError) as err:
        load_text_encoders(tiny.clip, tiny.t5, t5_tokenizer=str(tmp_path / "missing"))
    assert err.value.input_name == "t5_tokenizer"
