"""Fuzzing the mesh reader and the renderer with mutated files of every supported format.

500 files (100 per format: GLB, GLTF, OBJ, PLY, STL, built from the bundled sample mesh with
trimesh) get truncated, bit-flipped, header-swapped, huge-count and NaN-payload mutations; each
is loaded and rendered (raycast, 16 x 16, one or two views) in a worker process. A case passes
when it renders or raises the pack's InputError; any other exception, a crash of the worker or
a case running past CASE_TIMEOUT fails, printing the seed and case index.

Reproduce one case: ``python tests/unit/test_mesh_fuzz.py SEED INDEX`` (runs it in-process).
The seed is REALIZ3D_FUZZ_SEED (default 1234).
"""
import json
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FORMATS = ("glb", "gltf", "obj", "ply", "stl")
N_CASES = 500
SEED = int(os.environ.get("REALIZ3D_FUZZ_SEED", "1234"))
CASE_TIMEOUT = 30.0           # seconds per case (a case takes ~0.1 s; a hang is a failure)
WORKERS = 2
MEMORY_LIMIT = 3 << 30        # address-space cap of a worker: a huge count must fail cleanly, not swap


# ------------------------------------------------------------------ base files and mutations

def base_files(folder: str) -> dict:
    """{format: (main file name, {file name: bytes})} exported from assets/sample_mesh.glb."""
    import trimesh

    scene = trimesh.load(os.path.join(ROOT, "assets", "sample_mesh.glb"), force="scene", process=False)
    flat = scene.to_geometry()
    out = {"glb": ("m.glb", {"m.glb": scene.export(file_type="glb")})}
    files = scene.export(file_type="gltf")
    out["gltf"] = ("model.gltf", dict(files))
    d = os.path.join(folder, "obj")
    os.makedirs(d, exist_ok=True)
    scene.export(os.path.join(d, "m.obj"))
    out["obj"] = ("m.obj", {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)})
    out["ply"] = ("m.ply", {"m.ply": flat.export(file_type="ply")})
    out["ply_ascii"] = ("m.ply", {"m.ply": flat.export(file_type="ply", encoding="ascii")})
    out["stl"] = ("m.stl", {"m.stl": flat.export(file_type="stl")})
    out["stl_ascii"] = ("m.stl", {"m.stl": flat.export(file_type="stl_ascii").encode()})
    return out


HUGE = (2 ** 31 - 1, 2 ** 32 + 5, 10 ** 12, 10 ** 30, -1, -(2 ** 31), 0)
NAN_BYTES = (struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), struct.pack("<f", -float("inf")),
             struct.pack("<f", 3.0e38), b"\xff\xff\xff\xff")
NAN_TEXT = (b"nan", b"inf", b"-inf", b"1e39", b"-nan", b"1e-400")


def _split_glb(data: bytes):
    try:
        length = struct.unpack_from("<I", data, 12)[0]
        return data[20:20 + length], data[20 + length:]
    except struct.error:
        return None, None


def _join_glb(js: bytes, rest: bytes) -> bytes:
    js = js + b" " * (-len(js) % 4)
    return b"glTF" + struct.pack("<II", 2, 20 + len(js) + len(rest)) + struct.pack("<I", len(js)) + b"JSON" + js + rest


def _is_text(data: bytes) -> bool:
    return not any(b < 9 for b in data[:2048])


def _numbers(data: bytes, limit: int) -> list:
    return [m for m in re.finditer(rb"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", data[:limit])]


def mutate(rng: np.random.Generator, data: bytes, kind: str, others: list) -> bytes:
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[:int(rng.integers(0, max(len(data), 1)))])
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 33))):
            if data:
                i = int(rng.integers(0, len(data)))
                data[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(data)
    if kind == "swap_header":
        other = others[int(rng.integers(0, len(others)))]
        k = int(rng.integers(4, 257))
        return bytes(other[:k]) + bytes(data[k:])
    if kind == "huge_count":
        is_glb = data[:4] == b"glTF"
        js, rest = _split_glb(bytes(data)) if is_glb else (None, None)
        target = js if js is not None else bytes(data)
        # counts live in the text part: a PLY / glTF header, OBJ indices, or a binary STL's count
        limit = len(target) if _is_text(target) else min(len(target), 2048)
        if not is_glb and target[:80].find(b"solid") != 0 and len(target) >= 84 and not _is_text(target):
            if target[:3] != b"ply":                       # binary STL: the triangle count at byte 80
                out = bytearray(target)
                out[80:84] = struct.pack("<I", int(rng.choice([2 ** 32 - 1, 2 ** 24, 10 ** 6, 0])))
                return bytes(out)
        nums = _numbers(target, limit)
        if not nums:
            return bytes(data)
        for _ in range(int(rng.integers(1, 4))):
            m = nums[int(rng.integers(0, len(nums)))]
            value = str(HUGE[int(rng.integers(0, len(HUGE)))]).encode()
            target = target[:m.start()] + value + target[m.end():]
            nums = _numbers(target, limit if limit < len(target) else len(target))
            if not nums:
                break
        return _join_glb(target, rest) if js is not None else target
    if kind == "nan":
        if _is_text(bytes(data)):
            nums = _numbers(bytes(data), len(data))
            out = bytes(data)
            for _ in range(int(rng.integers(1, 6))):
                nums = _numbers(out, len(out))
                if not nums:
                    break
                m = nums[int(rng.integers(0, len(nums)))]
                out = out[:m.start()] + NAN_TEXT[int(rng.integers(0, len(NAN_TEXT)))] + out[m.end():]
            return out
        start = 84 if data[:4] != b"glTF" else 20 + (struct.unpack_from("<I", data, 12)[0] if len(data) >= 16 else 0)
        if data[:3] == b"ply":
            start = data.find(b"end_header") + 11
        for _ in range(int(rng.integers(1, 9))):
            if len(data) > start + 4:
                i = start + 4 * int(rng.integers(0, (len(data) - start) // 4))
                data[i:i + 4] = NAN_BYTES[int(rng.integers(0, len(NAN_BYTES)))]
        return bytes(data)
    raise ValueError(kind)


MUTATIONS = ("truncate", "bitflip", "swap_header", "huge_count", "nan")


def make_case(bases: dict, seed: int, index: int):
    """(format, main file name, {file name: bytes}, description, number of views) of case ``index``."""
    rng = np.random.default_rng([seed, index])
    fmt = FORMATS[index % len(FORMATS)]
    key = fmt
    if fmt in ("ply", "stl") and rng.random() < 0.4:
        key = fmt + "_ascii"
    main, files = bases[key]
    files = dict(files)
    kinds = [MUTATIONS[int(rng.integers(0, len(MUTATIONS)))] for _ in range(1 if rng.random() < 0.8 else 2)]
    names = sorted(files)
    target = main if (len(files) == 1 or rng.random() < 0.75) else names[int(rng.integers(0, len(names)))]
    others = [bases[f][1][bases[f][0]] for f in bases if f != key]
    for kind in kinds:
        files[target] = mutate(rng, files[target], kind, others)
    return fmt, main, files, f"{key}: {'+'.join(kinds)} of {target}", 1 + int(rng.integers(0, 2))


def run_case(bases: dict, seed: int, index: int, workdir: str):
    """'accepted' or 'refused'; raises anything else."""
    from realiz3d.renderers import InputError, load_mesh, normalize, orbit_rig, render_views

    fmt, main, files, _, views = make_case(bases, seed, index)
    folder = os.path.join(workdir, f"case{index}")
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    try:
        mesh = normalize(load_mesh(os.path.join(folder, main), "mesh_file", root=folder))
        render_views(mesh, orbit_rig(views, elevation_deg=20.0), 16, 16, backend="raycast")
        return "accepted"
    except InputError:
        return "refused"


# ------------------------------------------------------------------ worker process

def _worker(base_dir: str, seed: int) -> None:
    import resource
    import pickle

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from pack_import import import_pack
    import_pack("realiz3d")
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import logging
    logging.disable(logging.CRITICAL)
    import warnings
    warnings.simplefilter("ignore")
    with open(os.path.join(base_dir, "bases.pkl"), "rb") as f:
        bases = pickle.load(f)
    out = sys.stdout
    sys.stdout = sys.stderr = open(os.devnull, "w")       # trimesh prints; keep the protocol clean
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        index = int(line)
        try:
            result = {"index": index, "result": run_case(bases, seed, index, base_dir)}
        except BaseException as exc:   # noqa: BLE001 - reported to the parent as a failure
            result = {"index": index, "result": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()[-3000:]}
        out.write(json.dumps(result) + "\n")
        out.flush()


class Worker:
    def __init__(self, base_dir: str, seed: int):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", base_dir, str(seed)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1, env=env)
        self.index, self.started = None, 0.0
        line = self._readline(120.0)
        if line != "ready":
            raise RuntimeError(f"fuzz worker did not start: {line!r}")

    def _readline(self, timeout: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().strip()

    def send(self, index: int) -> None:
        self.index, self.started = index, time.monotonic()
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run_fuzz(seed: int = SEED, n_cases: int = N_CASES, workers: int = WORKERS):
    import pickle

    counts = {"accepted": 0, "refused": 0}
    failures = []
    with tempfile.TemporaryDirectory() as base_dir:
        bases = base_files(base_dir)
        with open(os.path.join(base_dir, "bases.pkl"), "wb") as f:
            pickle.dump(bases, f)
        pending = list(range(n_cases))[::-1]
        pool = [Worker(base_dir, seed) for _ in range(min(workers, n_cases))]
        for w in pool:
            if pending:
                w.send(pending.pop())
        busy = list(pool)
        while busy:
            ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], 0.5)
            now = time.monotonic()
            for w in list(busy):
                line = None
                if w.proc.stdout in ready:
                    line = w.proc.stdout.readline().strip()
                elif now - w.started < CASE_TIMEOUT:
                    continue
                if line:
                    r = json.loads(line)
                    if r["result"] in counts:
                        counts[r["result"]] += 1
                    else:
                        failures.append((w.index, r["error"], r.get("traceback", "")))
                else:                         # crashed (EOF) or hung past the timeout: replace it
                    why = "hang (over %.0f s)" % CASE_TIMEOUT if w.proc.poll() is None else \
                        f"worker crashed (exit {w.proc.poll()})"
                    failures.append((w.index, why, ""))
                    w.kill()
                    busy.remove(w)
                    w = Worker(base_dir, seed)
                    busy.append(w)
                if pending:
                    w.send(pending.pop())
                else:
                    busy.remove(w)
                    w.kill()
        for w in busy:
            w.kill()
        descriptions = {i: make_case(bases, seed, i)[3] for i, _, _ in failures}
    return counts, failures, descriptions


def test_mutated_meshes_load_and_render_or_are_refused():
    t0 = time.monotonic()
    counts, failures, descriptions = run_fuzz()
    print(f"\nmesh fuzz (seed {SEED}, {N_CASES} files): {counts['accepted']} accepted, {counts['refused']} refused, "
          f"{len(failures)} failed, {time.monotonic() - t0:.0f} s")
    for index, error, tb in failures[:20]:
        print(f"  FAILED seed {SEED} case {index} ({descriptions[index]}): {error}\n{tb}")
    assert not failures, (f"{len(failures)} fuzz case(s) failed; reproduce with "
                          f"`python tests/unit/test_mesh_fuzz.py {SEED} {failures[0][0]}`: "
                          + "; ".join(f"case {i} ({descriptions[i]}): {e}" for i, e, _ in failures[:10]))
    assert counts["accepted"] > 0 and counts["refused"] > 0, counts


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    else:                                  # reproduce one case in this process
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from pack_import import import_pack
        import_pack("realiz3d")
        seed, index = int(sys.argv[1]), int(sys.argv[2])
        with tempfile.TemporaryDirectory() as d:
            bases = base_files(d)
            print(make_case(bases, seed, index)[3])
            print(run_case(bases, seed, index, d))
