"""Write the tiny Flux-family test models (diffusers folder + ComfyUI-style single files).

    python scripts/make_tiny_models.py OUT_DIR [--seed 0] [--refany3d]

Offline and deterministic; a few MB. Point ComfyUI's model folders at OUT_DIR's sub-folders
(diffusers, diffusion_models, vae, text_encoders) to try the pack without real weights.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_import import import_pack  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refany3d", action="store_true",
                        help="also write RefAny3D weights for the tiny model to OUT_DIR/refany3d")
    args = parser.parse_args(argv)
    import_pack("realiz3d")
    from realiz3d.loading import load_pipeline_folder, write_tiny_set
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    t0 = time.perf_counter()
    files = write_tiny_set(args.out_dir, seed=args.seed)
    if args.refany3d:
        transformer = load_pipeline_folder(files.diffusers_folder).transformer
        write_tiny_refany3d(os.path.join(files.root, "refany3d"), transformer, seed=args.seed)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(files.root) for f in fs)
    print(f"wrote tiny Flux set to {files.root} ({total / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s)")
    for name, path in vars(files).items():
        if name != "root":
            print(f"  {name:17s} {os.path.relpath(path, files.root)}")


if __name__ == "__main__":
    main()
