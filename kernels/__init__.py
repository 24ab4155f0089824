"""Numba hot loops, each with a plain NumPy reference that the tests compare against."""

from lamcsp.kernels.distances import min_distances, min_distances_reference

__all__ = ["min_distances", "min_distances_reference"]
