"""Projections, filters and the per-tile reduction kernels."""
