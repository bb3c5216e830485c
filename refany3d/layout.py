"""RefAny3D's branch layout and group mask (SPEC.md section 2, as the reference code builds them).

Branch order everywhere: text, target RGB, target point map, N RGB views, N point-map views.
"""
from __future__ import annotations

import torch

TEXT, TARGET_RGB, TARGET_POINTS = 0, 1, 2
#: LoRA adapter names of the published weights
REFERENCE_ADAPTER, DOMAIN_ADAPTER = "default", "coord"
#: per-branch adapters after the text branch: target RGB, target point map, RGB views, point-map views
TARGET_ADAPTERS = ((), (DOMAIN_ADAPTER,))
RGB_VIEW_ADAPTERS = (REFERENCE_ADAPTER,)
POINT_VIEW_ADAPTERS = (REFERENCE_ADAPTER, DOMAIN_ADAPTER)


def num_branches(n_views: int) -> int:
    return 3 + 2 * n_views


def rgb_view(v: int) -> int:
    return 3 + v


def point_view(v: int, n_views: int) -> int:
    return 3 + n_views + v


def group_mask(n_views: int, text_agnostic: bool = True, independent_conditions: bool = False) -> torch.Tensor:
    """bool [3 + 2N, 3 + 2N], rows = queries.

    Text and target RGB attend to everything; the target point map to everything but the text
    (the text-agnostic mask; ``text_agnostic=False`` lets it see the text too); view v's RGB and
    point-map branches attend to the text, both targets and each other. With
    ``independent_conditions`` the views see only themselves and their pair: the forward that
    a condition KV cache reproduces exactly.
    """
    n = num_branches(n_views)
    m = torch.zeros(n, n, dtype=torch.bool)
    m[TEXT, :] = True
    m[TARGET_RGB, :] = True
    m[TARGET_POINTS, :] = True
    m[TARGET_POINTS, TEXT] = not text_agnostic
    for v in range(n_views):
        pair = [rgb_view(v), point_view(v, n_views)]
        for q in pair:
            m[q, pair] = True
            if not independent_conditions:
                m[q, :3] = True
    return m


def domain_tags(n_views: int) -> list:
    """Domain tag per branch: None for text, 0 for RGB branches, 1 for point-map branches."""
    return [None, 0, 1] + [0] * n_views + [1] * n_views


def adapters(n_views: int) -> list[tuple[str, ...]]:
    """Adapter set per branch: none for text and target RGB, coord for the target point map,
    default for RGB views, default+coord for point-map views."""
    return [(), *TARGET_ADAPTERS] + [RGB_VIEW_ADAPTERS] * n_views + [POINT_VIEW_ADAPTERS] * n_views
