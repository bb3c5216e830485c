"""Samplers built on the engine: shared flow-matching pieces, Realiz3D sampling, multiview grids."""
