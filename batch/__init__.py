"""Batches of prompts on a headless ComfyUI: one workflow, a manifest of items, outputs per item.

The whole public API of the batch runner (``realiz3d-batch``, ``python -m realiz3d.batch``):

- :mod:`.manifest`: the items (CSV, JSONL, or meshes x prompts x seeds);
- :mod:`.workflow`: a workflow file or template name in API format, and its content hash;
- :mod:`.mapping`: manifest columns onto node inputs (``COLUMN=NODE.INPUT``, the node by id, title,
  display name or class);
- :mod:`.ledger`: what is done, keyed by the item's inputs and the workflow's hash, written atomically;
- :mod:`.client` / :mod:`.transfer`: ComfyUI over HTTP only (never imported), files through
  ``/upload/image`` and ``/view`` or a shared disk;
- :mod:`.runner`: a bounded number of prompts in flight, retries, Ctrl-C, resume;
- :mod:`.report`: ``index.jsonl`` and the contact sheet;
- :mod:`.host`: the pack's own headless ComfyUI when no ``--url`` is given.

Nothing here imports ComfyUI or torch at import time.
"""
from .client import ComfyClient, ComfyError
from .ledger import Ledger, item_key
from .manifest import Item, Manifest, ManifestError, cross_product, read_manifest
from .mapping import MappingError, Target, apply_item, parse_param, parse_set, resolve_targets
from .runner import BatchOptions, BatchRunner, Summary
from .workflow import WorkflowError, load_workflow, workflow_hash

__all__ = ["ComfyClient", "ComfyError", "Ledger", "item_key", "Item", "Manifest", "ManifestError", "cross_product",
           "read_manifest", "MappingError", "Target", "apply_item", "parse_param", "parse_set", "resolve_targets",
           "BatchOptions", "BatchRunner", "Summary", "WorkflowError", "load_workflow", "workflow_hash"]
