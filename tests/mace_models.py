"""Small MACE models built with mace-torch itself and saved as MACE saves them
(``torch.save(model)`` of the whole module, a ``.model`` file); no weights can be downloaded here.

The weights are MACE's random initialisation from a fixed torch seed, with per-element reference
energies and a scale and shift of the size MACE-MP's have, so energies, forces and stresses are of
a realistic size and smooth; nothing is fitted. Needs mace-torch (run in the MACE environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: elements of the test models (Z): Si, O, Mg, Al, Cu
ELEMENTS = (8, 12, 13, 14, 29)


def build_model(*, channels: int = 8, max_ell: int = 1, hidden_l: int = 1, correlation: int = 2,
                interactions: int = 2, r_max: float = 4.5, heads: list[str] | None = None,
                elements: tuple[int, ...] = ELEMENTS, num_bessel: int = 8, avg_num_neighbors: float = 20.0,
                radial_mlp: tuple[int, ...] = (32, 32, 32),
                dtype: str = "float64", seed: int = 1, scale: float = 0.8, pair_repulsion: bool = False) -> Any:
    """A ``ScaleShiftMACE``: tiny by default; MACE-MP-small-like with :data:`MP_SMALL`.

    Args:
        channels: hidden channels.
        max_ell: spherical-harmonics order of the edges.
        radial_mlp: hidden widths of the radial network.
        hidden_l: 0 for scalar hidden features (``channels x 0e``), 1 to add ``channels x 1o``.
        correlation: body order of the products.
        interactions: message-passing layers.
        r_max: cutoff, Å.
        heads: head names of a multi-head model (one head, "Default", when None).
        elements: atomic numbers covered.
        dtype: ``"float64"`` or ``"float32"`` (the model's parameters).
        seed: torch seed of the initialisation.
        scale: the interaction energy's scale (MACE-MP's is about 0.8 eV).
        pair_repulsion: add MACE's ZBL pair repulsion (keeps relaxations under pressure from
            collapsing: a random model has no repulsive core of its own).
    """
    import torch  # noqa: I001 - mace before e3nn: mace's import lets e3nn 0.4.4 load under torch >= 2.6
    from mace import modules
    from e3nn import o3

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if dtype == "float64" else torch.float32)
    try:
        n_heads = len(heads) if heads else 1
        rng = np.random.default_rng(seed)
        # per-element reference energies of a few eV, as fitted E0s are
        e0 = -rng.uniform(1.0, 6.0, size=(n_heads, len(elements)))
        hidden = f"{channels}x0e" if hidden_l == 0 else f"{channels}x0e + {channels}x1o"
        model = modules.ScaleShiftMACE(
            r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=5, max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=interactions, num_elements=len(elements), hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=e0 if heads else e0[0],
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=list(elements), correlation=correlation,
            gate=torch.nn.functional.silu, radial_MLP=list(radial_mlp),
            atomic_inter_scale=[scale] * n_heads if heads else scale,
            atomic_inter_shift=[0.1 * (k + 1) for k in range(n_heads)] if heads else 0.1,
            heads=heads, pair_repulsion=pair_repulsion,
        )
        if heads:  # distinct readouts per head: perturb the head-specific output weights
            with torch.no_grad():
                for p in model.readouts.parameters():
                    p.add_(0.3 * torch.randn_like(p))
    finally:
        torch.set_default_dtype(old)
    return model


#: MACE-MP-0 "small"'s hyperparameters (128x0e hidden, max_ell 3, correlation 3, 2 layers, r_max 6 Å,
#: 89 elements); its weights cannot be downloaded here, so the benchmark builds this shape
#: randomly initialised (with ZBL repulsion and a larger scale, so that relaxations move and stop)
MP_SMALL: dict[str, Any] = {"channels": 128, "max_ell": 3, "hidden_l": 0, "correlation": 3, "interactions": 2,
                            "r_max": 6.0, "num_bessel": 10, "avg_num_neighbors": 61.0, "radial_mlp": (64, 64, 64),
                            "elements": tuple(range(1, 90)), "scale": 5.0, "pair_repulsion": True}


def save_model(model: Any, path: str | Path) -> Path:
    """``torch.save`` of the whole module, as MACE's trainer writes ``.model`` files."""
    import torch

    path = Path(path)
    torch.save(model, path)
    return path


def build_and_save(folder: str | Path) -> dict[str, Path]:
    """The test models: ``tiny64.model`` and ``tiny32.model`` (one head, float64 / float32) and
    ``two_heads.model`` (heads ``pbe`` and ``r2scan``, float64) and ``relax.model`` (float64, a
    larger interaction scale and ZBL repulsion, so that relaxations move and stop)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "tiny64": save_model(build_model(dtype="float64"), folder / "tiny64.model"),
        "tiny32": save_model(build_model(dtype="float32"), folder / "tiny32.model"),
        "two_heads": save_model(build_model(heads=["pbe", "r2scan"]), folder / "two_heads.model"),
        "relax": save_model(build_model(scale=5.0, pair_repulsion=True), folder / "relax.model"),
    }
