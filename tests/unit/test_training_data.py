"""Training datasets: folder formats, bad input, on-the-fly renders, triplets, sample order."""
import json
import os

import numpy as np
import pytest
import torch

from realiz3d.renderers import InputError, look_at
from realiz3d.training import DataOrder, ImageFolder, MeshFolder, TripletFolder, load_config
from realiz3d.training.data import build_datasets
from realiz3d.training.data_order import SampleLoader
from training_helpers import SIZE, blob_image, one_thread, save_png, write_box, write_real, write_synthetic  # noqa: F401


def test_real_and_synthetic_folders(tmp_path):
    real = write_real(tmp_path / "real", n=3)
    os.remove(os.path.join(real, "r01.txt"))
    ds = ImageFolder(real, "data.real", "real", SIZE, caption="default caption")
    samples = [ds.load(i) for i in range(len(ds))]
    assert len(ds) == 3 and samples[0].caption == "a photo of a red chair" and samples[1].caption == "default caption"
    assert samples[0].image.shape == (SIZE, SIZE, 3) and samples[0].image.dtype == torch.float32
    assert 0.0 <= float(samples[0].image.min()) and float(samples[0].image.max()) <= 1.0 and samples[0].controls is None

    syn = write_synthetic(tmp_path / "syn", n=2, controls=("normal", "depth"))
    ds = ImageFolder(syn, "data.synthetic", "synthetic", SIZE, controls=("depth", "normal"))
    assert len(ds) == 2                                   # NAME.normal.png / NAME.depth.png are not samples
    s = ds.load(0)
    assert s.controls.shape == (2, SIZE, SIZE, 3)
    from PIL import Image
    depth = np.asarray(Image.open(os.path.join(syn, "s00.depth.png")), np.float32) / 255
    assert torch.equal(s.controls[0], torch.from_numpy(depth))   # in the config's order


def test_missing_empty_and_unreadable_folders(tmp_path, monkeypatch):
    for folder, what in ((tmp_path / "nope", "not a folder"), (tmp_path, "holds no images")):
        with pytest.raises(InputError) as e:
            ImageFolder(str(folder), "data.real", "real", SIZE)
        assert e.value.input_name == "data.real" and str(folder) in str(e.value) and what in str(e.value)
    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr("realiz3d.training.data.os.listdir", refuse)
    with pytest.raises(InputError) as e:
        ImageFolder(str(locked), "data.synthetic", "synthetic", SIZE)
    assert e.value.input_name == "data.synthetic" and "could not be read" in str(e.value)


def test_mixed_sizes_are_cropped_or_refused(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_png(blob_image(rng, SIZE), folder / "a.png")
    wide = blob_image(rng, 40, w=80)                      # 80x40: scaled to 64x32, 16 px cut on each side
    save_png(wide, folder / "b.png")
    ds = ImageFolder(str(folder), "data.real", "real", SIZE, resize="crop")
    b = ds.load(1).image
    assert b.shape == (SIZE, SIZE, 3)
    from PIL import Image
    expected = np.asarray(Image.fromarray(wide).resize((64, 32), Image.LANCZOS))[:, 16:48]
    assert torch.equal(b, torch.from_numpy(expected.astype(np.float32) / 255))
    with pytest.raises(InputError) as e:
        ImageFolder(str(folder), "data.real", "real", SIZE, resize="error")
    assert e.value.input_name == "data.size" and "b.png (80x40)" in str(e.value)


def test_bad_samples_stop_or_are_skipped_and_logged(tmp_path):
    syn = write_synthetic(tmp_path / "syn", n=3, controls=("normal",))
    os.remove(os.path.join(syn, "s01.normal.png"))                                   # missing control map
    with open(os.path.join(syn, "s02.png"), "wb") as f:
        f.write(b"not a png at all")                                                 # unreadable image
    with pytest.raises(InputError) as e:
        ImageFolder(syn, "data.synthetic", "synthetic", SIZE, controls=("normal",), on_bad="stop")
    assert e.value.input_name == "data.synthetic" and "s01.png" in str(e.value) and "s01.normal.png" in str(e.value)
    logged = []
    ds = ImageFolder(syn, "data.synthetic", "synthetic", SIZE, controls=("normal",), on_bad="skip", log=logged.append)
    assert len(ds) == 1 and ds.load(0).key.endswith("s00.png")
    assert any("s01.png" in m for m in logged) and any("s02.png" in m for m in logged)

    # a file that passes the header check but fails to decode when drawn
    real = write_real(tmp_path / "real", n=3)
    with open(os.path.join(real, "r01.png"), "r+b") as f:
        f.truncate(120)
    ds = ImageFolder(real, "data.real", "real", SIZE)
    loader = SampleLoader({"real": ds}, "skip", logged.append)
    assert loader.load("real", 1).key.endswith("r02.png") and "r01.png" in logged[-1]
    with pytest.raises(InputError) as e:
        SampleLoader({"real": ds}, "stop", logged.append).load("real", 1)
    assert e.value.input_name == "data.real" and "r01.png" in str(e.value)


def test_meshes_render_on_the_fly_reproducibly(tmp_path):
    write_box(str(tmp_path / "m" / "box.glb"))
    cfg = load_config({"data": {"render": {"views_per_mesh": 3, "backend": "raycast"}}})
    ds = MeshFolder(str(tmp_path / "m"), "data.meshes", SIZE, cfg.data.render, controls=("normal", "points", "depth"),
                    caption="a box", seed=5)
    assert len(ds) == 3
    a, b, c = ds.load(1), ds.load(1), ds.load(2)
    assert torch.equal(a.image, b.image) and torch.equal(a.controls, b.controls)     # seeded by the index
    assert not torch.equal(a.image, c.image)                                           # another camera
    assert a.controls.shape == (3, SIZE, SIZE, 3) and a.caption == "a box"
    fg = (a.image < 0.99).any(-1)                                  # object on white; controls black outside it
    assert fg.any() and (~fg).any() and torch.equal(a.controls[0].sum(-1) > 0, fg)
    other = MeshFolder(str(tmp_path / "m"), "data.meshes", SIZE, cfg.data.render, seed=6)
    assert not torch.equal(other.load(1).image, a.image)


def test_refany3d_triplets(tmp_path):
    folder = tmp_path / "tri"
    write_box(str(folder / "meshes" / "box.glb"))
    rng = np.random.default_rng(0)
    eye = np.array([3.0, 1.5, 2.0])
    poses = {"a": {"eye": eye.tolist()},                                            # eye / target / up
             "b": np.linalg.inv(look_at(eye)).tolist(),                              # 4x4 object-to-camera (OpenGL)
             "c": (np.diag([1.0, -1, -1, 1]) @ np.linalg.inv(look_at(eye))).tolist()}  # the same camera, OpenCV
    for name, pose in poses.items():
        save_png(blob_image(rng, SIZE), folder / f"{name}.png")
        meta = {"mesh": "meshes/box.glb", "pose": pose, "fov": 40, "caption": f"box {name}"}
        if name == "c":
            meta["convention"] = "opencv"
        (folder / f"{name}.json").write_text(json.dumps(meta))
    ds = TripletFolder(str(folder), "data.refany3d", SIZE, n_views=2, condition_size=SIZE, backend="raycast")
    a, b, c = (ds.load(i) for i in range(3))
    assert a.caption == "box a" and a.point_map.shape == (SIZE, SIZE, 3)
    assert a.views[0].shape == (2, SIZE, SIZE, 3) and a.views[1].shape == (2, SIZE, SIZE, 3)
    assert torch.equal(a.point_map, b.point_map) and torch.equal(a.point_map, c.point_map)
    bg = (a.point_map == 1.0).all(-1)
    assert bg.any() and (~bg).any()                                                 # white background, object seen

    (folder / "d.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "d.json").write_text("{not json")
    (folder / "e.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "e.json").write_text(json.dumps({"mesh": "meshes/missing.glb", "pose": {"eye": [3, 0, 0]}}))
    with pytest.raises(InputError) as e:
        TripletFolder(str(folder), "data.refany3d", SIZE, 2, SIZE, "raycast", on_bad="stop")
    assert e.value.input_name == "data.refany3d" and "d.json" in str(e.value)
    logged = []
    ds = TripletFolder(str(folder), "data.refany3d", SIZE, 2, SIZE, "raycast", on_bad="skip", log=logged.append)
    assert len(ds) == 3 and any("d.json" in m for m in logged) and any("missing.glb" in m for m in logged)


def test_build_datasets_requires_what_the_ratio_draws(tmp_path):
    real = write_real(tmp_path / "real", n=2)
    cfg = load_config({"recipe": "stage1", "data": {"real": real, "real_ratio": 0.5}})
    with pytest.raises(InputError) as e:
        build_datasets(cfg)
    assert e.value.input_name == "data.synthetic"
    only_real = load_config({"recipe": "stage1", "data": {"real": real, "real_ratio": 1.0, "size": SIZE}})
    assert set(build_datasets(only_real)) == {"real"}


def test_sample_order_depends_on_seed_and_step_only():
    sizes, ratios = {"real": 5, "synthetic": 7}, {"real": 0.4, "synthetic": 0.6}
    a = DataOrder(3, sizes, ratios)
    draws = [a.next(4) for _ in range(6)]
    b = DataOrder(3, sizes, ratios)
    for _ in range(2):
        b.next(4)
    state = b.state_dict()
    c = DataOrder(3, sizes, ratios)
    c.load_state_dict(state)
    assert [c.next(4) for _ in range(4)] == draws[2:]                          # resume reproduces the order
    assert DataOrder(4, sizes, ratios).next(4) != draws[0]
    flat = [d for step in draws for d in step]
    reals = [i for s, i in flat if s == "real"]
    assert sorted(reals[:5]) == list(range(5))                                   # each item once per epoch
    only = DataOrder(0, sizes, {"real": 0.0, "synthetic": 1.0})
    assert all(s == "synthetic" for s, _ in only.next(20))
    with pytest.raises(InputError):
        c.load_state_dict({**state, "sizes": {"real": 6, "synthetic": 7}})


def test_triplet_meshes_must_lie_inside_the_dataset_folder(tmp_path):
    folder = tmp_path / "tri"
    write_box(str(folder / "meshes" / "box.glb"))
    write_box(str(tmp_path / "secret.glb"))                       # a real mesh outside the dataset folder
    rng = np.random.default_rng(0)
    save_png(blob_image(rng, SIZE), folder / "ok.png")
    (folder / "ok.json").write_text(json.dumps({"mesh": "meshes/box.glb", "pose": {"eye": [3.0, 1.5, 2.0]}}))
    ds = TripletFolder(str(folder), "data.refany3d", SIZE, 2, SIZE, "raycast")
    assert len(ds) == 1 and ds.items[0][3] == os.path.realpath(folder / "meshes" / "box.glb")
    assert ds.load(0).point_map.shape == (SIZE, SIZE, 3)          # a mesh inside still works

    bad = folder / "bad.png"
    bad.write_bytes((folder / "ok.png").read_bytes())
    os.symlink(tmp_path / "secret.glb", folder / "meshes" / "link.glb")
    for ref in (str(tmp_path / "secret.glb"), "../secret.glb", "meshes/../../secret.glb", "meshes/link.glb"):
        (folder / "bad.json").write_text(json.dumps({"mesh": ref, "pose": {"eye": [3.0, 1.5, 2.0]}}))
        for policy in ("stop", "skip"):                       # refused even when bad samples are skipped
            with pytest.raises(InputError) as e:
                TripletFolder(str(folder), "data.refany3d", SIZE, 2, SIZE, "raycast", on_bad=policy)
            msg = str(e.value)
            assert e.value.input_name == "data.refany3d", ref
            assert "bad.json" in msg and ref in msg and "must lie inside the dataset folder" in msg, msg


def test_transparent_control_maps_go_over_black_and_images_over_white(tmp_path):
    """A control map's documented background is black (CONVENTIONS.md), a render's is white: a
    fully transparent pixel reads as 0 in the control and as 1 in the target image."""
    from PIL import Image
    folder = tmp_path / "syn"
    folder.mkdir()
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[: SIZE // 2, :, :] = (200, 100, 50, 255)          # top half opaque, bottom half transparent
    Image.fromarray(rgba).save(folder / "s00.png")
    Image.fromarray(rgba).save(folder / "s00.normal.png")
    (folder / "s00.txt").write_text("a render")
    s = ImageFolder(str(folder), "data.synthetic", "synthetic", SIZE, controls=("normal",)).load(0)
    bottom = slice(SIZE // 2 + 2, SIZE)
    assert torch.all(s.controls[0][bottom] == 0.0) and torch.all(s.image[bottom] == 1.0)
    assert torch.allclose(s.controls[0][2, 2], torch.tensor([200, 100, 50]) / 255.0)
