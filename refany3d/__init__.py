"""RefAny3D: image generation referenced by a 3D asset (SPEC.md section 2), on the branched engine.

    weights = attach_refany3d(pipe.transformer, "default.safetensors", "coord.safetensors",
                              "domain_embedder.pth")
    rgb, point_map = sample(pipe, weights, "a chair in a sunlit room", rgb_views, point_views,
                            RefAny3DSettings(steps=28))
"""
from .domain_embedder import convert_to_safetensors, load_domain_embedder, make_domain_embedder
from .layout import adapters, domain_tags, group_mask
from .point_maps import decode_point_map, point_clouds, xyz_maps
from .sampler import RefAny3DSettings, sample
from .weights import RefAny3DWeights, attach_refany3d

__all__ = ["convert_to_safetensors", "load_domain_embedder", "make_domain_embedder", "adapters", "domain_tags",
           "group_mask", "RefAny3DSettings", "decode_point_map", "point_clouds", "xyz_maps", "sample",
           "RefAny3DWeights", "attach_refany3d"]
