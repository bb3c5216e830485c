"""Training on ComfyUI's own Flux MODEL (training.backbone.HostBackbone): LoRAs and shifters beside
the shared module, whose weights stay bit-identical; the same forward as the diffusers path; files
in the same layout; fp8-stored weights train too."""
import pytest
import torch

from comfy_native import native_model
from realiz3d.engine.lora_files import read_lora
from realiz3d.training import MemoryDataset, Sample, evaluate_loss, load_config, train
from realiz3d.training.backbone import DiffusersBackbone, HostBackbone
from training_helpers import base_config, blob_image, one_thread, stage1_shifters, tiny_pipe  # noqa: F401


def samples(n=2):
    import numpy as np
    rng = np.random.default_rng(3)
    img = lambda: torch.from_numpy(blob_image(rng).astype("float32") / 255.0)  # noqa: E731
    syn = [Sample(f"s{i}", "synthetic", img(), "a render", controls=torch.stack([img(), img()])) for i in range(n)]
    real = [Sample(f"r{i}", "real", img(), "a photo") for i in range(n)]
    return {"synthetic": MemoryDataset(syn, "synthetic"), "real": MemoryDataset(real, "real")}


def host_backbone(pipe, weight_dtype=torch.float32):
    patcher = native_model(pipe.transformer, weight_dtype, torch.float32 if weight_dtype != torch.float32 else None)
    module = patcher.model.diffusion_model
    encoders = DiffusersBackbone(pipe, "cpu")            # the tiny set's text encoders and VAE, as functions

    def images(x):
        vae = pipe.vae
        return vae.encode(x.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean

    bb = HostBackbone(module, torch.float32, "cpu", lambda c: encoders.encode_text(c, 8),
                      images, pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor)
    return bb, module


def stage2(tmp_path, **train_kw):
    return load_config(base_config(tmp_path, "stage2", data={"real_ratio": 0.5},
                                   train={"steps": 8, "lr": 2e-2, "latents": "mean", "gradient_checkpointing": True,
                                          **train_kw},
                                   stage2={"shifters": stage1_shifters(), "tau_b": 2}))


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float8_e4m3fn])
def test_lora_training_on_a_native_model_learns_and_leaves_its_weights_alone(tmp_path, weight_dtype):
    pipe = tiny_pipe()
    bb, module = host_backbone(pipe, weight_dtype)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flags = [p.requires_grad for p in module.parameters()]
    cfg, data = stage2(tmp_path), samples()
    val = [data["synthetic"].samples[0], data["real"].samples[0]]
    start = evaluate_loss(cfg, bb, val)
    result = train(cfg, backbone=bb, datasets=data)
    end = evaluate_loss(cfg, bb, val, result.parameters)
    assert end < start * 0.9, (start, end)                                      # the loss falls
    after = module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)  # bit-identical
    assert [p.requires_grad for p in module.parameters()] == flags
    assert all(p.grad is None for p in module.parameters())
    assert not bb.side.names                                                    # nothing left beside it
    # the files are diffusers-layout LoRAs: the same keys the peft path writes
    peft_run = train(load_config(base_config(tmp_path / "peft", "stage2", train={"steps": 1, "latents": "mean"},
                                             stage2={"shifters": stage1_shifters(), "tau_b": 2})),
                     tiny_pipe(), datasets=samples())
    for kind in ("control_lora", "target_lora"):
        assert set(read_lora(result.outputs[kind], kind)) == set(read_lora(peft_run.outputs[kind], kind))


def test_the_native_forward_is_the_diffusers_forward(tmp_path):
    """The same loss on both paths with fresh LoRAs (the identity) and with LoRAs trained beside
    the native model: the side LoRAs act where peft's would, tensor names and shapes included."""
    cfg, data = stage2(tmp_path, steps=3), samples()
    bb, _ = host_backbone(tiny_pipe())
    sample = [data["synthetic"].samples[0], data["real"].samples[1]]
    a, b = evaluate_loss(cfg, bb, sample), evaluate_loss(cfg, tiny_pipe(), sample)
    assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (a, b)
    trained = train(cfg, backbone=bb, datasets=samples()).parameters
    a, b = evaluate_loss(cfg, bb, sample, trained), evaluate_loss(cfg, tiny_pipe(), sample, trained)
    assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (a, b)


def test_shifters_train_on_a_native_model(tmp_path):
    pipe = tiny_pipe()
    bb, module = host_backbone(pipe)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cfg = load_config(base_config(tmp_path, "stage1", train={"steps": 4, "lr": 5e-2, "latents": "mean"}))
    result = train(cfg, backbone=bb, datasets=samples())
    assert any(v.abs().max() > 0 for k, v in result.parameters.items() if ".right." in k)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_full_finetuning_of_a_shared_model_is_refused(tmp_path):
    from realiz3d.renderers.errors import InputError

    bb, _ = host_backbone(tiny_pipe())
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters(), "full_finetune": True}))
    with pytest.raises(InputError) as e:
        train(cfg, backbone=bb, datasets=samples())
    assert e.value.input_name == "stage2.full_finetune"


def test_captions_and_latents_are_encoded_once_on_disk_before_the_first_step(tmp_path):
    pipe = tiny_pipe()
    calls, released = [], []

    def run(folder, **train_kw):
        bb, _ = host_backbone(pipe)
        text, images = bb._text, bb._images
        bb._text = lambda c: (calls.append(("text", bool(released))), text(c))[1]
        bb._images = lambda x: (calls.append(("image", bool(released))), images(x))[1]
        bb._release = lambda: released.append(True)
        cfg = stage2(folder, steps=3, cache_dir=str(tmp_path / "cache"), precache=True, **train_kw)
        return train(cfg, backbone=bb, datasets=samples())

    first = run(tmp_path / "a")
    assert calls and released == [True]
    assert all(not after for _, after in calls)              # every encoder call came before the release
    calls.clear()
    second = run(tmp_path / "b")
    assert calls == []                                        # all from the disk cache
    assert second.losses == first.losses
    import os
    files = [os.path.join(tmp_path / "cache", f) for f in os.listdir(tmp_path / "cache")]
    assert files and all(f.endswith(".safetensors") for f in files)
    # the disk cache keeps within its bound (least recently used files go)
    from realiz3d.training.encode import DiskCache
    small = DiskCache(str(tmp_path / "small"), max_bytes=3000)
    for k in range(6):
        small.put(f"k{k}", {"x": torch.zeros(200)})              # 800 bytes of data each
    kept = os.listdir(tmp_path / "small")
    assert 1 <= len(kept) < 6 and sum(os.path.getsize(os.path.join(tmp_path / "small", f)) for f in kept) <= 3000
    assert small.get("k5") is not None and small.get("k0") is None


def test_refany3d_trains_on_a_native_model(tmp_path):
    from training_helpers import write_triplets

    pipe = tiny_pipe()
    bb, module = host_backbone(pipe)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cfg = load_config(base_config(tmp_path, "refany3d", data={"refany3d": write_triplets(tmp_path / "trip")},
                                  train={"steps": 2, "latents": "mean", "gradient_checkpointing": True}))
    result = train(cfg, backbone=bb)
    assert {"default", "coord", "domain_embedder"} <= set(result.outputs)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
