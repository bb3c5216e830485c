"""``realiz3d-batch`` / ``python -m realiz3d.batch``: a manifest through one workflow on ComfyUI.

    realiz3d-batch refany3d_from_mesh --tiny --out runs/demo \\
        --meshes 'meshes/*.glb' --prompt 'a chair' --prompt 'a lamp' --seeds 0-1 \\
        --set 'mesh=Load Mesh (Realiz3D).mesh_file' --set prompt=10.text --set seed=4.seed

Exit status: 0 all items done, 1 some failed, 2 bad arguments or no server, 130 stopped by Ctrl-C.
"""
from __future__ import annotations

import argparse
import signal
import sys

EPILOG = """Items come from --manifest (CSV with a header row, or JSONL), or from the cross product of
--meshes, --prompt/--prompts and --seeds (columns mesh, prompt, seed). A value naming an existing
file (relative to the manifest's folder) is sent to the server: uploaded through /upload/image
(remote, the default with --url), or copied into its input folder (the runner's own server, or
--comfy-base). Outputs: OUT/items/<item>/, OUT/index.jsonl, OUT/contact_sheet.png, OUT/ledger.json
(a re-run skips what is done). Ctrl-C once: the running prompt finishes, queued ones are withdrawn;
twice: it is interrupted too."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realiz3d-batch", description=__doc__.split("\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workflow", help="workflow JSON (API or UI format) or a template name from example_workflows/ "
                                    "(e.g. refany3d_from_mesh)")
    items = p.add_argument_group("items")
    items.add_argument("--manifest", help="CSV or JSONL file, one item per row")
    items.add_argument("--meshes", action="append", default=[], help="folder or glob of meshes (column 'mesh'); "
                                                                       "repeatable")
    items.add_argument("--prompt", action="append", default=[], help="a prompt (column 'prompt'); repeatable")
    items.add_argument("--prompts", help="text file of prompts, one a line (column 'prompt')")
    items.add_argument("--seeds", help="seeds, e.g. '0,1,5-7' (column 'seed')")
    mapping = p.add_argument_group("mapping")
    mapping.add_argument("--set", action="append", default=[], dest="sets", metavar="COLUMN=NODE.INPUT",
                         help="feed a column to a node input; NODE: id, title, display name or class. Repeatable")
    mapping.add_argument("--param", action="append", default=[], metavar="NODE.INPUT=VALUE",
                         help="a value for every item (JSON or text), e.g. 4.steps=2. Repeatable")
    server = p.add_argument_group("server")
    server.add_argument("--url", help="a running ComfyUI (default: start the pack's own headless one)")
    server.add_argument("--remote", action="store_true",
                        help="send files through /upload/image and /view even to the runner's own server "
                             "(always so with --url unless --comfy-base)")
    server.add_argument("--comfy-base", help="with --url: the server's base folder as this machine sees it "
                                             "(shared disk: files are copied, not uploaded)")
    server.add_argument("--host-base", help="base folder of the runner's own server (default: a temporary one)")
    server.add_argument("--tiny", action="store_true",
                        help="run on the tiny test model: ComfyUI's Flux loaders replaced by Load Flux Model "
                             "(scripts/pack_loader.py), and, for the runner's own server, the tiny model installed")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder (its ledger makes a re-run resume)")
    run.add_argument("--in-flight", type=int, default=2, help="prompts queued on the server at once (default 2)")
    run.add_argument("--retries", type=int, default=1, help="extra attempts for a failed item (default 1)")
    run.add_argument("--timeout", type=float, help="seconds a prompt may run before it is interrupted")
    run.add_argument("--skip-failed", action="store_true", help="do not re-run items a previous run recorded as failed")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (item lines still print)")
    return p


def _manifest(args):
    from .manifest import ManifestError, cross_product, expand_meshes, parse_seeds, read_lines, read_manifest

    if args.manifest:
        if args.meshes or args.prompt or args.prompts or args.seeds:
            raise ManifestError("give --manifest or --meshes/--prompt/--prompts/--seeds, not both")
        return read_manifest(args.manifest)
    prompts = list(args.prompt) + (read_lines(args.prompts) if args.prompts else [])
    meshes = [m for pattern in args.meshes for m in expand_meshes(pattern)]
    return cross_product({"mesh": meshes, "prompt": prompts, "seed": parse_seeds(args.seeds) if args.seeds else []})


def run(args, log) -> int:
    import contextlib

    from .client import ComfyClient
    from .mapping import MappingError, coerce, parse_param, resolve_target, resolve_targets
    from .runner import BatchOptions, BatchRunner
    from .transfer import SharedDiskTransfer, UploadTransfer
    from .workflow import read_workflow, to_api

    if args.in_flight < 1 or args.retries < 0:
        raise MappingError("--in-flight must be at least 1 and --retries at least 0")
    if not args.sets:
        raise MappingError("nothing maps the items onto the workflow: give --set COLUMN=NODE.INPUT")
    manifest = _manifest(args)
    data = read_workflow(args.workflow)
    with contextlib.ExitStack() as stack:
        if args.url:
            client = ComfyClient(args.url)
            shared = args.comfy_base if args.comfy_base and not args.remote else None
        else:
            from .host import OwnHost

            server = stack.enter_context(OwnHost(args.host_base, tiny=args.tiny, log=log))
            client = ComfyClient(server.url)
            shared = None if args.remote else server.base
        transfer = SharedDiskTransfer(shared) if shared else UploadTransfer(client)
        info = client.object_info()
        api = to_api(data, info)
        if args.tiny:
            from ..scripts.pack_loader import with_pack_loader

            api = with_pack_loader(api)
        targets = resolve_targets(args.sets, api, info, manifest.columns)
        fixed = {}
        for spec in args.param:
            node, name, value = parse_param(spec)
            target = resolve_target(api, node, name, info)
            fixed[target] = coerce(value, target)
        options = BatchOptions(in_flight=args.in_flight, retries=args.retries, timeout=args.timeout,
                               retry_failed=not args.skip_failed, progress=not args.no_progress)
        runner = BatchRunner(client, transfer, api, targets, manifest, args.out, options, fixed=fixed, log=log)
        log(f"{len(manifest.items)} items, {args.in_flight} in flight, files "
            f"{'uploaded' if transfer.remote else 'copied to ' + shared}; output in {runner.out_dir}")
        previous = signal.signal(signal.SIGINT, lambda *_: runner.request_stop())
        try:
            summary = runner.run()
        finally:
            signal.signal(signal.SIGINT, previous)
    log(f"{summary.total} items: {summary.done} done, {summary.failed} failed, {summary.pending} not run; "
        f"{summary.ran} ran now, {summary.skipped} skipped (ledger) in {summary.seconds:.1f} s. "
        f"Index: {runner.out_dir}/index.jsonl, contact sheet: {runner.out_dir}/contact_sheet.png")
    if summary.interrupted:
        return 130
    return 1 if summary.failed else 0


def main(argv=None) -> int:
    from .client import ComfyError
    from .ledger import LedgerLocked
    from .manifest import ManifestError
    from .mapping import MappingError
    from .workflow import WorkflowError

    args = build_parser().parse_args(argv)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    try:
        return run(args, log)
    except (ManifestError, MappingError, WorkflowError, ComfyError, LedgerLocked, RuntimeError) as exc:
        log(f"realiz3d-batch: error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
