"""Numba hot loops, each with a plain NumPy reference that the tests compare against."""

from lamcsp.kernels.distances import min_distances, min_distances_reference
from lamcsp.kernels.fingerprints import (
    bcm_fingerprint,
    bcm_fingerprints,
    bcm_fingerprints_reference,
    element_pairs,
    fingerprint_distance_matrix,
    fingerprint_distance_matrix_reference,
    fingerprint_distances,
    fingerprint_distances_reference,
    ov_distance,
    ov_fingerprint,
    ov_fingerprints,
    ov_fingerprints_reference,
    pair_weights,
)
from lamcsp.kernels.screen import distance_screen, distance_screen_reference

__all__ = [
    "bcm_fingerprint",
    "bcm_fingerprints",
    "bcm_fingerprints_reference",
    "distance_screen",
    "distance_screen_reference",
    "element_pairs",
    "fingerprint_distance_matrix",
    "fingerprint_distance_matrix_reference",
    "fingerprint_distances",
    "fingerprint_distances_reference",
    "min_distances",
    "min_distances_reference",
    "ov_distance",
    "ov_fingerprint",
    "ov_fingerprints",
    "ov_fingerprints_reference",
    "pair_weights",
]
