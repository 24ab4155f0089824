"""The ``lamcsp`` command line. ``main()`` only parses and dispatches; the work lives in the
library (:mod:`lamcsp.relax`, :mod:`lamcsp.potentials`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lamcsp import __version__
from lamcsp.errors import SetupError


def _positive(kind: type, name: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamcsp", description="Crystal structure prediction with large atomic models."
    )
    parser.add_argument("--version", action="version", version=f"lamcsp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "relax",
        help="relax structures (cell and atoms) with a batched model",
        description="Relax every frame of every INPUT (CIF, POSCAR, extxyz) under a scalar "
        "pressure, many structures per model call, and write them as extxyz frames carrying "
        "energy, enthalpy_per_atom, pressure_gpa, spacegroup, converged, steps and status.",
    )
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="CIF, POSCAR or extxyz files")
    r.add_argument("-o", "--output", default="relaxed.extxyz", help="output extxyz file")
    r.add_argument("--model", default="chgnet",
                   help="model spec: chgnet (default, pretrained 0.3.0), chgnet:PATH, emt, ase:NAME")
    r.add_argument("--pressure", type=float, default=0.0, metavar="GPA", help="external pressure, GPa")
    r.add_argument("--fmax", type=_positive(float, "--fmax"), default=0.05, help="eV/Å")
    r.add_argument("--max-steps", type=_positive(int, "--max-steps"), default=500)
    r.add_argument("--optimizer", choices=["fire", "lbfgs"], default="fire")
    r.add_argument("--fixed-cell", action="store_true", help="relax atoms only")
    r.add_argument("--max-atoms", type=_positive(int, "--max-atoms"), default=None,
                   help="atoms per model call (default: from GPU memory, or a measured CPU default)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--symprec", type=_positive(float, "--symprec"), default=0.1,
                   help="spglib tolerance for the reported space group")
    r.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="force the progress bar on (default: on when stderr is a terminal)")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.set_defaults(func=cmd_relax)
    return parser


def cmd_relax(args: argparse.Namespace) -> int:
    from lamcsp.io import read_structures, result_frame, write_frames
    from lamcsp.potentials import load_potential
    from lamcsp.relax import Relaxer

    if not -1000.0 <= args.pressure <= 1000.0:
        raise SetupError(
            "--pressure", f"{args.pressure} GPa is outside the supported range [-1000, 1000] GPa"
        )
    structures = read_structures(args.inputs)
    potential = load_potential(args.model, device=args.device)
    relaxer = Relaxer(
        potential,
        optimizer=args.optimizer,
        fmax=args.fmax,
        max_steps=args.max_steps,
        relax_cell=not args.fixed_cell,
        max_atoms=args.max_atoms,
        progress=args.progress,
    )
    results = relaxer.relax(structures, pressure_gpa=args.pressure)
    frames = [
        result_frame(res, info={"source": s.info.get("source"), "frame": s.info.get("frame"),
                                "model": potential.model_id}, symprec=args.symprec)
        for s, res in zip(structures, results)
    ]
    write_frames(args.output, frames)
    n_conv = sum(r.converged for r in results)
    n_fail = sum(r.failed for r in results)
    print(
        f"relaxed {len(results)} structure(s) with {potential.model_id} in "
        f"{relaxer.n_model_calls} model calls: {n_conv} converged, "
        f"{len(results) - n_conv - n_fail} hit max steps, {n_fail} failed -> {args.output}"
    )
    for s, res in zip(structures, results):
        print(f"  {s.info.get('source')}[{s.info.get('frame')}] {res.atoms.get_chemical_formula()}: "
              f"H/atom = {res.enthalpy_per_atom:.5f} eV, {res.status}, {res.steps} steps")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SetupError as exc:
        print(f"lamcsp {args.command}: error in {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lamcsp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
