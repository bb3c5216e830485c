"""Training nodes in a real ComfyUI with the tiny model: the train-a-shifter-then-sample template,
resume, cancel (a checkpoint is written, the next prompt runs), Train Control (stage 2 and the
baseline) feeding Realiz3D Sample, Train RefAny3D, and bad input."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import error_message, load_workflow, run_and_interrupt
from pack_loader import TINY_SEQUENCE_LENGTH
from realiz3d.adapters import load_shifters
from realiz3d.loading import write_tiny_set
from realiz3d.nodes.paths import BUNDLED_FILES, BUNDLED_SAMPLE

SMALL = {"steps": 3, "size": 32, "learning_rate": 0.01, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def setup(server, tmp_path_factory):
    """The tiny model as models/diffusers/FLUX.1-dev, and tiny datasets in input/realiz3d_train."""
    m = os.path.join(server.base, "models")
    target = os.path.join(m, "diffusers", "FLUX.1-dev")
    if not os.path.exists(target):
        shutil.copytree(write_tiny_set(str(tmp_path_factory.mktemp("tiny_t"))).diffusers_folder, target)
    root = os.path.join(server.base, "input", "realiz3d_train")
    rng = np.random.default_rng(0)
    for kind in ("real", "synthetic", "refany3d"):
        os.makedirs(os.path.join(root, kind), exist_ok=True)
    for k in range(4):
        photo = (rng.random((40, 48, 3)) * 255).astype(np.uint8)                 # another size: cropped
        Image.fromarray(photo).save(os.path.join(root, "real", f"p{k}.png"))
        flat = np.zeros((32, 32, 3), np.uint8)
        flat[8:24, 8:24] = (200, 40 * k, 60)
        Image.fromarray(flat).save(os.path.join(root, "synthetic", f"s{k}.png"))
        normal = np.zeros((32, 32, 3), np.uint8)
        normal[8:24, 8:24] = (128, 128, 255)
        Image.fromarray(normal).save(os.path.join(root, "synthetic", f"s{k}.normal.png"))
        with open(os.path.join(root, "synthetic", f"s{k}.txt"), "w") as f:
            f.write("a render of a red box")
    shutil.copy(BUNDLED_FILES[BUNDLED_SAMPLE], os.path.join(root, "refany3d", "sample.glb"))
    for k, az in enumerate((0.0, 1.2)):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(
            os.path.join(root, "refany3d", f"t{k}.png"))
        eye = [3.0 * np.cos(az), 0.8, 3.0 * np.sin(az)]
        with open(os.path.join(root, "refany3d", f"t{k}.json"), "w") as f:
            json.dump({"mesh": "sample.glb", "pose": {"eye": eye, "target": [0, 0, 0], "up": [0, 1, 0]},
                       "fov": 45, "caption": "a toy on a table", "frame": "normalized"}, f)
    return server


def template(**train):
    wf = load_workflow("api/train_shifter_then_sample.json")
    wf["2"]["inputs"].update({**SMALL, "rank": 4, "output_name": "e2e_shifters", **train})
    wf["4"]["inputs"].update(width=32, height=32, steps=2)
    wf["7"]["inputs"]["max_sequence_length"] = TINY_SEQUENCE_LENGTH
    return wf


def models(server, kind):
    return os.path.join(server.base, "models", kind)


def checkpoints(server, kind, name):
    return sorted(glob.glob(os.path.join(server.base, "output", "realiz3d_training", kind, name, "checkpoints",
                                         "*.ckpt")))


def test_template_trains_a_shifter_and_samples_with_it(setup):
    server = setup
    h = server.run(template())
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    sample = [p for p in files if "trained_shifter_sample_" in p]
    curve = [p for p in files if "shifter_loss_" in p]
    assert len(sample) == 1 and len(curve) == 1
    assert np.asarray(Image.open(curve[0])).std() > 1.0                       # a drawn curve, not blank
    path = os.path.join(models(server, "realiz3d_shifters"), "e2e_shifters.safetensors")
    shifters = load_shifters(path)
    assert shifters.cfg.rank == 4 and shifters.cfg.num_blocks == 4
    assert any(b.right.weight.abs().max() > 0 for b in shifters.blocks)        # trained: no longer the identity
    assert checkpoints(server, "shifters", "e2e_shifters")
    # the trained shifters change what is sampled (same seed, without the shifter)
    wf = template()
    del wf["4"]["inputs"]["shifter"], wf["4"]["inputs"]["schedule"]
    wf["5"]["inputs"]["filename_prefix"] = "realiz3d/no_shifter"
    plain = server.run(wf)
    assert plain["status"]["status_str"] == "success", error_message(plain)
    other = [p for p in server.output_files(plain) if "no_shifter_" in p]
    assert not np.array_equal(np.asarray(Image.open(sample[0])), np.asarray(Image.open(other[0])))


def test_resume_continues_from_the_newest_checkpoint(setup):
    server = setup
    h = server.run(template(output_name="e2e_resume", steps=2))
    assert h["status"]["status_str"] == "success", error_message(h)
    assert [os.path.basename(p) for p in checkpoints(server, "shifters", "e2e_resume")][-1] == "step-0000002.ckpt"
    h = server.run(template(output_name="e2e_resume", steps=4))
    assert h["status"]["status_str"] == "success", error_message(h)
    assert os.path.basename(checkpoints(server, "shifters", "e2e_resume")[-1]) == "step-0000004.ckpt"
    assert "resum" in server.log().lower()


def test_cancel_writes_a_checkpoint_and_the_next_prompt_runs(setup):
    server = setup
    seen = run_and_interrupt(server, template(output_name="e2e_cancel", steps=400, checkpoint_every=1000), "2",
                             after=2)
    assert seen["end"] == "execution_interrupted", seen
    assert max(seen["after"], default=2) <= seen["before"][-1] + 1                  # stops within a step
    ckpts = checkpoints(server, "shifters", "e2e_cancel")
    assert len(ckpts) == 1 and int(os.path.basename(ckpts[0])[5:12]) < 10       # written on cancel
    h = server.run(template(output_name="e2e_after_cancel", steps=1))
    assert h["status"]["status_str"] == "success", error_message(h)


def control_graph(**train):
    return {
        "1": load_workflow("api/train_shifter_then_sample.json")["1"],
        "2": {"class_type": "Realiz3DTrainControl", "inputs": {
            "model": ["1", 0], "shifter": "e2e_shifters.safetensors", "baseline": False,
            "real_folder": "realiz3d_train/real", "synthetic_folder": "realiz3d_train/synthetic", "meshes_folder": "",
            "caption": "a photo", "real_ratio": 0.5, "control_map": "normal", "tau_b": 2, "lora_rank": 4,
            "batch_size": 1, "seed": 0, "output_name": "e2e_control", "resume": False, **{**SMALL, **train}}},
        "3": {"class_type": "Realiz3DSample", "inputs": {"model": ["1", 0], "positive": ["7", 0], "vae": ["1", 2],
              "control_images": ["4", 0], "width": 32, "height": 32, "batch": 1, "steps": 2, "guidance": 3.5,
              "seed": 1, "control": ["2", 0]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "realiz3d_train/synthetic/s1.normal.png"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "realiz3d/controlled"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "realiz3d/control_loss"}},
        "7": {"class_type": "Realiz3DFluxTextEncode", "inputs": {"clip": ["1", 1], "text": "a red box",
              "max_sequence_length": TINY_SEQUENCE_LENGTH}},
    }


@pytest.mark.parametrize("baseline", [False, True])
def test_train_control_feeds_realiz3d_sample(setup, baseline):
    server = setup
    if not os.path.exists(os.path.join(models(server, "realiz3d_shifters"), "e2e_shifters.safetensors")):
        assert server.run(template())["status"]["status_str"] == "success"
    name = "e2e_baseline" if baseline else "e2e_control"
    h = server.run(control_graph(baseline=baseline, output_name=name))
    assert h["status"]["status_str"] == "success", error_message(h)
    for suffix in ("control", "target"):
        assert os.path.isfile(os.path.join(models(server, "loras"), f"{name}_{suffix}.safetensors"))
    out = [p for p in server.output_files(h) if "controlled_" in p]
    assert len(out) == 1 and np.asarray(Image.open(out[0])).shape == (32, 32, 3)
    assert checkpoints(server, "baseline" if baseline else "control", name)


def test_train_refany3d_saves_loadable_weights(setup):
    server = setup
    wf = {
        "1": load_workflow("api/train_shifter_then_sample.json")["1"],
        "2": {"class_type": "Realiz3DTrainRefAny3D", "inputs": {
            "model": ["1", 0], "triplets_folder": "realiz3d_train/refany3d", "views": 2, "condition_size": 32,
            "lora_rank": 4, "prompt_dropout": 0.1, "condition_dropout": 0.1, "batch_size": 1, "seed": 0,
            "output_name": "e2e_refany3d", "resume": False, **SMALL, "steps": 2}},
        "3": {"class_type": "Realiz3DLoadRefAny3D", "inputs": {"model": ["1", 0],
              "reference_lora": "e2e_refany3d/default.safetensors", "domain_lora": "e2e_refany3d/coord.safetensors",
              "domain_embedder": "e2e_refany3d/domain_embedder.safetensors"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "realiz3d/refany3d_loss"}},
    }
    h = server.run({k: wf[k] for k in ("1", "2", "4")})
    assert h["status"]["status_str"] == "success", error_message(h)
    folder = os.path.join(models(server, "refany3d"), "e2e_refany3d")
    assert sorted(os.listdir(folder)) == ["coord.safetensors", "default.safetensors", "domain_embedder.safetensors"]
    from realiz3d.loading import load_pipeline_folder
    from realiz3d.refany3d import attach_refany3d
    transformer = load_pipeline_folder(os.path.join(models(server, "diffusers"), "FLUX.1-dev")).transformer
    attach_refany3d(transformer, *(os.path.join(folder, f) for f in ("default.safetensors", "coord.safetensors",
                                                                      "domain_embedder.safetensors")))


@pytest.mark.parametrize("change,name,phrase", [
    ({"real_folder": "../../etc"}, "real_folder", "outside ComfyUI's input folder"),
    ({"synthetic_folder": "realiz3d_train/nothing_here"}, "synthetic_folder", "is not a folder"),
    ({"output_name": "../escape"}, "output_name", "plain file name"),
    ({"size": 40}, "data.size", "multiple of 16"),
])
def test_bad_training_input(setup, change, name, phrase):
    server = setup
    before = set(glob.glob(os.path.join(server.base, "models", "**", "*"), recursive=True))
    h = server.run(template(**change))
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert name in msg and phrase in msg, msg
    assert set(glob.glob(os.path.join(server.base, "models", "**", "*"), recursive=True)) == before
    ok = server.run(template(output_name="e2e_after_error", steps=1))
    assert ok["status"]["status_str"] == "success", error_message(ok)


def test_tau_b_beyond_the_model_is_named(setup):
    server = setup
    if not os.path.exists(os.path.join(models(server, "realiz3d_shifters"), "e2e_shifters.safetensors")):
        assert server.run(template())["status"]["status_str"] == "success"
    h = server.run(control_graph(tau_b=9, output_name="e2e_bad_tau"))
    assert h["status"]["status_str"] == "error"
    msg = error_message(h)
    assert "tau_b" in msg and "4" in msg, msg


def test_a_triplet_whose_mesh_leaves_the_dataset_folder_is_refused(setup):
    """A triplet JSON pointing outside its dataset folder (../ or absolute) is refused by name
    before any training; the secret mesh is never read into an output."""
    server = setup
    root = os.path.join(server.base, "input", "realiz3d_train", "refany3d_escape")
    os.makedirs(root, exist_ok=True)
    secret = os.path.join(server.base, "secret.glb")
    shutil.copy(BUNDLED_FILES[BUNDLED_SAMPLE], secret)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(os.path.join(root, "t0.png"))
    before = set(glob.glob(os.path.join(server.base, "models", "**", "*"), recursive=True))
    for ref in ("../../../secret.glb", secret):
        with open(os.path.join(root, "t0.json"), "w") as f:
            json.dump({"mesh": ref, "pose": {"eye": [3.0, 0.8, 0.0]}, "fov": 45, "caption": "x"}, f)
        h = server.run({"1": load_workflow("api/train_shifter_then_sample.json")["1"],
                        "2": {"class_type": "Realiz3DTrainRefAny3D", "inputs": {
                            "model": ["1", 0], "triplets_folder": "realiz3d_train/refany3d_escape", "views": 2,
                            "condition_size": 32, "lora_rank": 4, "prompt_dropout": 0.1, "condition_dropout": 0.1,
                            "batch_size": 1, "seed": 0, "output_name": "e2e_escape", "resume": False, **SMALL,
                            "steps": 1}}})
        assert h["status"]["status_str"] == "error"
        msg = error_message(h)
        assert "data.refany3d" in msg and "outside the dataset folder" in msg, msg
        assert set(glob.glob(os.path.join(server.base, "models", "**", "*"), recursive=True)) == before
    ok = server.run(template(output_name="e2e_after_escape", steps=1))
    assert ok["status"]["status_str"] == "success", error_message(ok)


# ---------------------------------------------------------------- ComfyUI's own MODEL; run policy

def native_setup(server):
    """The tiny set's transformer as a diffusion-model file (the same weights as FLUX.1-dev above)."""
    path = os.path.join(models(server, "diffusion_models"), "native_train", "tiny-flux.safetensors")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        import tempfile
        shutil.copy(write_tiny_set(tempfile.mkdtemp(prefix="r3d-native-train-")).transformer, path)
    vae = os.path.join(models(server, "vae"), "native_train", "ae.safetensors")
    if not os.path.isfile(vae):                      # Flux's VAE architecture, random weights, for Load VAE
        import torch
        from diffusers import AutoencoderKL
        from safetensors.torch import save_file

        from realiz3d.loading import configs
        torch.manual_seed(0)
        model = AutoencoderKL.from_config({k: v for k, v in configs.load("flux_vae").items() if not k.startswith("_")})
        os.makedirs(os.path.dirname(vae), exist_ok=True)
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, vae)
    if not os.path.exists(os.path.join(models(server, "realiz3d_shifters"), "e2e_shifters.safetensors")):
        assert server.run(template())["status"]["status_str"] == "success"


def native_control_graph(weight_dtype="default", host_vae=False, **train):
    g = control_graph(**train)
    g["2"]["inputs"].update(model=["11", 0], clip=["1", 1], vae=["14", 0] if host_vae else ["1", 2])
    if host_vae:                                     # ComfyUI's own VAE encodes the training images
        g["14"] = {"class_type": "VAELoader", "inputs": {"vae_name": "native_train/ae.safetensors"}}
    g["3"]["inputs"]["model"] = ["11", 0]
    g["11"] = {"class_type": "Realiz3DTestTinyFlux",
               "inputs": {"unet_name": "native_train/tiny-flux.safetensors", "weight_dtype": weight_dtype}}
    g["12"] = {"class_type": "Realiz3DTestModelDigest", "inputs": {"model": ["11", 0], "after": ["3", 0]}}
    return g


def digest(history, node):
    return history["outputs"][node]["text"][0]


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_train_control_on_a_native_model_leaves_its_weights_bit_identical(setup, weight_dtype):
    server = setup
    native_setup(server)
    before = server.run({"11": native_control_graph(weight_dtype)["11"],
                         "13": {"class_type": "Realiz3DTestModelDigest", "inputs": {"model": ["11", 0]}}})
    assert before["status"]["status_str"] == "success", error_message(before)
    name = f"e2e_native_{weight_dtype}"
    h = server.run(native_control_graph(weight_dtype, host_vae=weight_dtype != "default", output_name=name, steps=4))
    assert h["status"]["status_str"] == "success", error_message(h)
    assert digest(h, "12") == digest(before, "13")                  # trained on it, sampled with it: unchanged
    from realiz3d.engine.lora_files import read_lora
    lora = read_lora(os.path.join(models(server, "loras"), f"{name}_control.safetensors"), "lora")
    assert any(v.abs().max() > 0 for k, v in lora.items() if ".lora_B." in k)          # trained
    out = [p for p in server.output_files(h) if "controlled_" in p]
    assert len(out) == 1                                                               # and sampled with
    log = server.log()
    assert "encoding" in log and "before the first step" in log


def test_a_changed_run_is_refused_then_kept_apart(setup):
    server = setup
    native_setup(server)
    name = "e2e_policy"
    first = server.run(native_control_graph(output_name=name, steps=2, resume=True))
    assert first["status"]["status_str"] == "success", error_message(first)
    lora = os.path.join(models(server, "loras"), f"{name}_control.safetensors")
    installed = open(lora, "rb").read()
    for change, key in (({"learning_rate": 0.02}, "train.lr"), ({"control_map": "depth"}, "data.controls"),
                        ({"baseline": False, "tau_b": 1}, "stage2.tau_b")):
        h = server.run(native_control_graph(output_name=name, steps=3, resume=True, **change))
        assert h["status"]["status_str"] == "error"
        msg = error_message(h)
        assert "resume" in msg and key in msg and "continue anyway" in msg, msg
    # more steps resume the same run and update its own file
    more = server.run(native_control_graph(output_name=name, steps=3, resume=True))
    assert more["status"]["status_str"] == "success", error_message(more)
    assert os.path.basename(checkpoints(server, "control", name)[-1]) == "step-0000003.ckpt"
    installed = open(lora, "rb").read()
    # resume off: a new run folder, the old checkpoints kept, the old file kept, a versioned file
    fresh = server.run(native_control_graph(output_name=name, steps=2, resume=False))
    assert fresh["status"]["status_str"] == "success", error_message(fresh)
    assert checkpoints(server, "control", name)                                       # the first run's
    assert glob.glob(os.path.join(server.base, "output", "realiz3d_training", "control", f"{name}.2", "checkpoints",
                                  "*.ckpt"))
    assert open(lora, "rb").read() == installed
    assert os.path.isfile(os.path.join(models(server, "loras"), f"{name}_control_2.safetensors"))
    # 'start a new run' on a change; 'continue anyway' resumes despite it
    new = server.run(native_control_graph(output_name=name, steps=2, learning_rate=0.02, on_change="start a new run"))
    assert new["status"]["status_str"] == "success", error_message(new)
    assert os.path.isdir(os.path.join(server.base, "output", "realiz3d_training", "control", f"{name}.3"))
    anyway = server.run(native_control_graph(output_name=name, steps=4, learning_rate=0.03,
                                             on_change="continue anyway"))
    assert anyway["status"]["status_str"] == "success", error_message(anyway)


def test_train_control_reads_captions_through_comfyuis_clip(setup):
    """A CLIP from ComfyUI's own classes (comfy.sd.CLIP with Flux's tokenizers and FluxClipModel,
    shrunk to the tiny model; what DualCLIPLoader gives) encodes the captions: the run trains, and
    another CLIP's weights give another LoRA while the same CLIP again gives the same one."""
    server = setup
    native_setup(server)

    def run(seed, name):
        g = native_control_graph(output_name=name, steps=2)
        g["15"] = {"class_type": "Realiz3DTestTinyFluxClip", "inputs": {"seed": seed}}
        g["2"]["inputs"]["clip"] = ["15", 0]
        h = server.run(g)
        assert h["status"]["status_str"] == "success", error_message(h)
        assert digest(h, "12")                                         # and sampled with the MODEL after it
        from safetensors.torch import load_file
        return load_file(os.path.join(models(server, "loras"), f"{name}_control.safetensors"))

    a, b, again = run(0, "e2e_clip_a"), run(1, "e2e_clip_b"), run(0, "e2e_clip_a_again")
    ups = [k for k in a if ".lora_B." in k]
    assert any(a[k].abs().max() > 0 for k in ups)                                         # trained
    assert any(not torch.equal(a[k], b[k]) for k in ups)                                  # the CLIP mattered
    assert all(torch.equal(a[k], again[k]) for k in a)                                    # and nothing else did
