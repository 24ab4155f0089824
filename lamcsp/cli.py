"""The ``lamcsp`` command line. ``main()`` only parses and dispatches; the work lives in the
library (:mod:`lamcsp.relax`, :mod:`lamcsp.potentials`, :mod:`lamcsp.generators`)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

from lamcsp import __version__
from lamcsp.errors import SetupError, WorkerError

log = logging.getLogger("lamcsp.cli")  # by name: under `python -m lamcsp.cli` __name__ is "__main__"

#: the largest count an option takes (-n, --max-steps, --top, ...): a larger one is a typo
MAX_COUNT = 10_000_000


def _number(kind: type, name: str, text: str):
    """``text`` as a finite ``kind`` (int or float), or argparse's error naming the option."""
    try:
        value = kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from exc
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {text!r}")
    return value


def _positive(kind: type, name: str, limit: float = MAX_COUNT):
    """An argparse type: a finite number in (0, ``limit``] (argparse exits with status 2)."""

    def parse(text: str):
        value = _number(kind, name, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        if value > limit:
            shown = int(limit) if float(limit).is_integer() else limit
            raise argparse.ArgumentTypeError(f"{name} must be at most {shown}, got {text!r}")
        return value

    return parse


def _finite(name: str):
    """An argparse type: a finite float."""

    def parse(text: str) -> float:
        return _number(float, name, text)

    return parse


def build_parser() -> argparse.ArgumentParser:
    import typing

    # the options that a campaign has too take the campaign schema's defaults (written there once)
    from lamcsp.campaign import GeneratorSpec, ModelSpec, RelaxSpec, ReportSpec, SystemSpec
    from lamcsp.campaign.sections import MAX_VOLUME_FACTOR

    parser = argparse.ArgumentParser(
        prog="lamcsp", description="Crystal structure prediction with large atomic models."
    )
    parser.add_argument("--version", action="version", version=f"lamcsp {__version__}")
    log_help = ("also write every message (progress lines and warnings, with timestamps) to FILE, "
                "appended; --quiet does not apply to it")
    parser.add_argument("--log", default=None, metavar="FILE", help=log_help)
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
                   help="model spec: chgnet (default, pretrained 0.3.0), chgnet:PATH, deepmd:PATH[@HEAD] "
                        "(a DeePMD-kit .pt/.pth model and its head), sevennet[:NAME|PATH][@MODAL] (7net-0, "
                        "7net-mf-0@PBE, 7net-l3i5: shipped in sevenn), mace:PATH[@HEAD] (a MACE .model "
                        "file), emt, ase:NAME")
    r.add_argument("--trust-model", action="store_true",
                   help="load a chgnet:PATH, sevennet:PATH or mace:PATH file even if it needs more than "
                        "weights to load (it may run code: only for files you trust like a script)")
    r.add_argument("--pressure", type=_finite("--pressure"), default=0.0, metavar="GPA",
                   help="external pressure, GPa")
    r.add_argument("--fmax", type=_positive(float, "--fmax"), default=RelaxSpec.default_of("fmax"),
                   help="eV/Å")
    r.add_argument("--max-steps", type=_positive(int, "--max-steps"),
                   default=RelaxSpec.default_of("max_steps"))
    r.add_argument("--optimizer", choices=typing.get_args(RelaxSpec.model_fields["optimizer"].annotation),
                   default=RelaxSpec.default_of("optimizer"))
    r.add_argument("--fixed-cell", action="store_true", help="relax atoms only")
    r.add_argument("--max-atoms", type=_positive(int, "--max-atoms"), default=None,
                   help="atoms per model call (default: from GPU memory, or a measured CPU default)")
    r.add_argument("--device", default=ModelSpec.default_of("device"), help="auto, cpu, cuda or cuda:N")
    r.add_argument("--symprec", type=_positive(float, "--symprec"), default=ReportSpec.default_of("symprec"),
                   help="spglib tolerance for the reported space group")
    r.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="force the progress bar on (default: on when stderr is a terminal)")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.set_defaults(func=cmd_relax)

    g = sub.add_parser(
        "generate",
        help="generate random symmetric structures (AIRSS buildcell style)",
        description="Generate N random crystal structures of a composition, each built in a space "
        "group drawn from --spacegroups with Wyckoff positions that hold the composition, at the "
        "target volume and respecting the minimum-distance matrix (0.7 x sum of covalent radii), "
        "and write them as extxyz frames carrying spacegroup (the group requested), generator, "
        "formula_units and wyckoffs. The same --seed gives the same file.",
    )
    g.add_argument("--composition", required=True, metavar="FORMULA",
                   help="e.g. Si8 or MgSiO3: one formula unit when --formula-units is given, "
                        "else the whole cell")
    g.add_argument("--formula-units", default=None, metavar="LIST",
                   help="formula units per cell: a range 1-4, a list 2,4, or both (default: the "
                        "composition is the whole cell)")
    sgs = SystemSpec.default_of("spacegroups")
    g.add_argument("--spacegroups", default=f"{sgs[0]}-{sgs[-1]}", metavar="LIST",
                   help="allowed space groups: ranges and lists, e.g. 1,2,10-20 (default %(default)s)")
    g.add_argument("--generator", default=GeneratorSpec.default_of("name"),
                   help="generator name (default: %(default)s)")
    g.add_argument("-n", dest="n", type=_positive(int, "-n"), default=1, help="number of structures")
    g.add_argument("--seed", type=int, default=None,
                   help="random seed (default: fresh entropy, printed so the run can be repeated)")
    g.add_argument("-o", "--output", default="generated.extxyz", help="output extxyz file")
    g.add_argument("--volume-factor", type=_positive(float, "--volume-factor", MAX_VOLUME_FACTOR),
                   default=SystemSpec.default_of("volume_factor"),
                   help="target volume = this x the sum of element volumes")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser(
        "validate",
        help="check a campaign file and summarise it",
        description="Read CAMPAIGN (YAML), validate every field against the campaign schema "
        "(docs/campaign_reference.md) and print a short summary. A bad field is reported by its "
        "dotted path with what is allowed (exit status 2).",
    )
    v.add_argument("campaign", metavar="CAMPAIGN", help="campaign YAML file")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "search",
        help="run a structure-search campaign",
        description="Run the campaign in CAMPAIGN (YAML): generations of propose, screen, batched "
        "relax, dedupe and store, for every composition and pressure, until its budget or "
        "stopping rule; then write the report. Results go to an ASE database in the run "
        "directory (`ase db RUN/results.db`), with a checkpoint after every generation: after a "
        "crash or kill, the same command with --resume continues where it stopped.",
    )
    s.add_argument("campaign", metavar="CAMPAIGN", nargs="+",
                   help="campaign YAML file (several with --shared-finetune)")
    s.add_argument("--shared-finetune", action="store_true",
                   help="run the campaigns as one set sharing their fine-tune iterations: one DeePMD-kit "
                        "model with a head per campaign (CHGNet: one model on all labels); each campaign "
                        "in RUN/<name>, the set's summary in RUN/summary.json")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in the output directory from its checkpoint")
    s.add_argument("-o", "--output", default=None, metavar="RUN",
                   help="run directory (default: the campaign's `output`, else runs/<name>)")
    s.add_argument("--db", default=None, metavar="URL",
                   help="database URL (e.g. postgresql://user@host/db) instead of RUN/results.db; "
                        "default: $LAMCSP_DB_URL where set. Give the password in LAMCSP_DB_URL, "
                        "PGPASSWORD or ~/.pgpass, not here (ps and shell history show arguments)")
    s.add_argument("--quiet", action="store_true", help="no progress lines (warnings are still shown)")
    s.set_defaults(func=cmd_search)

    rp = sub.add_parser(
        "report",
        help="write the report of a run (hulls, phase diagrams, enthalpy vs pressure, convergence)",
        description="Write RUN/report/report.html and summary.json: the convex hull at every "
        "pressure with the energy above hull of every unique structure, phase-diagram, "
        "enthalpy-vs-pressure and convergence plots, and the top structures as CIF and POSCAR.",
    )
    rp.add_argument("run", metavar="RUN", help="run directory")
    rp.add_argument("-o", "--output", default=None, metavar="DIR",
                    help="report directory (default RUN/report)")
    rp.set_defaults(func=cmd_report)

    st = sub.add_parser(
        "status",
        help="where a running or stopped run stands (writes nothing)",
        description="Print the generations RUN has completed, the rows stored per role, the best "
        "enthalpy per atom of every composition and pressure with its space group, the fine-tune "
        "iterations finished, and whether a search process holds RUN now. Reads only: the database "
        "is opened read-only and nothing in RUN changes.",
    )
    st.add_argument("run", metavar="RUN", help="run directory")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)

    vf = sub.add_parser(
        "verify",
        help="check a run's answer with an oracle (DFT): its best structures, re-relaxed",
        description="Relax the best unique structures of every composition and pressure of RUN (the "
        "model's top K, and all within WINDOW eV/atom of its hull) with an oracle, store them as rows "
        "role=verify beside the model's enthalpies, and rewrite the report: per composition the "
        "model's ranking against the oracle's and the answer (the oracle's lowest). Structures this "
        "oracle verified before are not verified again; a killed verification resumes from its "
        "journal. The oracle and the settings default to the run's campaign (its `verify` section, "
        "else its `finetune.oracle`). Works under mpiexec (the oracle runs on every rank).",
    )
    vf.add_argument("run", metavar="RUN", help="run directory")
    vf.add_argument("--oracle", default=None, metavar="SPEC",
                    help="an ASE calculator name (emt, gpaw...), a YAML/JSON mapping such as "
                         "'{calculator: gpaw, options: {mode: {name: pw, ecut: 400}, xc: PBE}}', "
                         "or a YAML file")
    vf.add_argument("--top-k", type=_positive(int, "--top-k"), default=None, metavar="K")
    vf.add_argument("--window", type=_finite("--window"), default=None, metavar="EV",
                    help="eV/atom above the model's hull")
    vf.add_argument("--mode", choices=["relax", "single_point"], default=None)
    vf.add_argument("--fmax", type=_positive(float, "--fmax"), default=None, help="eV/Å (relax)")
    vf.add_argument("--max-steps", type=_positive(int, "--max-steps"), default=None,
                    help="oracle calls per relaxation")
    vf.add_argument("--quiet", action="store_true", help="no progress lines (warnings are still shown)")
    vf.set_defaults(func=cmd_verify)

    ex = sub.add_parser(
        "export",
        help="write the best structures of a run as files",
        description="Write the N lowest-enthalpy unique structures of every pressure of RUN as CIF, "
        "POSCAR or extxyz files in DIR.",
    )
    ex.add_argument("run", metavar="RUN", help="run directory")
    ex.add_argument("--top", type=_positive(int, "--top"), default=10, metavar="N")
    ex.add_argument("--format", default="cif", choices=["cif", "poscar", "extxyz"])
    ex.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    ex.set_defaults(func=cmd_export)
    for command in sub.choices.values():  # --log before or after the command's name
        command.add_argument("--log", default=argparse.SUPPRESS, metavar="FILE", help=log_help)
    return parser


def parse_int_list(text: str, field: str, lo: int, hi: int) -> list[int]:
    """``"1,2,10-20"`` -> ``[1, 2, 10, ..., 20]`` (sorted, unique), each in ``[lo, hi]``.

    Raises:
        SetupError: malformed text or a value out of range (names ``field``).
    """
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                first, last = int(a), int(b)
            else:
                first = last = int(part)
        except ValueError:
            raise SetupError(
                field, f"cannot read {part!r}; give positive numbers and ranges such as 1,2,10-20"
            ) from None
        if first > last:
            raise SetupError(field, f"empty range {part!r}; write the smaller number first")
        if first < lo or last > hi:
            raise SetupError(field, f"{part!r} is outside the allowed {lo}-{hi}")
        out.update(range(first, last + 1))
    if not out:
        raise SetupError(field, f"no values in {text!r}; give numbers and ranges such as 1,2,10-20")
    return sorted(out)


def parse_formula(text: str, field: str = "--composition") -> dict[str, int]:
    """``"MgSiO3"`` -> ``{"Mg": 1, "Si": 1, "O": 3}`` (in the order written).

    Raises:
        SetupError: unreadable formula or unknown element (names ``field``).
    """
    from ase.data import chemical_symbols
    from ase.formula import Formula

    try:
        counts = Formula(text.strip()).count()
    except Exception as exc:  # ase raises ValueError and others on malformed formulas
        raise SetupError(field, f"cannot read formula {text!r} ({exc}); write e.g. Si8 or MgSiO3") from None
    if not counts:
        raise SetupError(field, f"formula {text!r} has no atoms; write e.g. Si8 or MgSiO3")
    for symbol, n in counts.items():
        if symbol not in chemical_symbols[1:]:
            raise SetupError(field, f"unknown element {symbol!r} in {text!r}; use chemical symbols, "
                                    "e.g. Si8 or MgSiO3")
        if n < 1:
            raise SetupError(field, f"{symbol} must have a positive count in {text!r}")
    return {k: int(v) for k, v in counts.items()}


#: generator and context fields -> the option that sets them
_GENERATE_FIELDS = {"composition": "--composition", "spacegroups": "--spacegroups",
                    "formula_units": "--formula-units", "volume_factor": "--volume-factor",
                    "generator": "--generator"}


def cmd_generate(args: argparse.Namespace) -> int:
    import secrets

    import numpy as np

    import lamcsp.generators.symmetric  # noqa: F401  (registers "random")
    from lamcsp.generators import GenerationContext, get_generator
    from lamcsp.io import check_output_path, write_frames

    check_output_path(args.output, "--output")
    composition = parse_formula(args.composition)
    fus = [1]
    if args.formula_units is not None:
        fus = parse_int_list(args.formula_units, "--formula-units", 1, 10_000)
    spacegroups = parse_int_list(args.spacegroups, "--spacegroups", 1, 230)
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    rng = np.random.default_rng(seed)
    context = GenerationContext(composition=composition, formula_units=fus, spacegroups=spacegroups,
                                volume_factor=float(args.volume_factor))
    try:
        generator = get_generator(args.generator)
        candidates = generator.propose(args.n, rng, context)
        for _ in range(5):  # a structure that ran out of attempts is retried, a few times
            if len(candidates) >= args.n:
                break
            more = generator.propose(args.n - len(candidates), rng, context)
            if not more:
                break
            candidates += more
    except SetupError as exc:
        raise SetupError(_GENERATE_FIELDS.get(exc.field, exc.field), exc.message) from exc
    frames = []
    for c in candidates:
        atoms = c.to_atoms()
        atoms.info["spacegroup"] = int(c.spacegroup) if c.spacegroup is not None else 0
        atoms.info["generator"] = c.generator
        if "formula_units" in c.origin:
            atoms.info["formula_units"] = int(c.origin["formula_units"])
        if c.wyckoffs:
            from ase.data import chemical_symbols

            atoms.info["wyckoffs"] = ",".join(f"{chemical_symbols[w.number]}:{w.label}" for w in c.wyckoffs)
        frames.append(atoms)
    write_frames(args.output, frames)
    print(f"generated {len(frames)} structure(s) of {args.composition} with {args.generator} "
          f"(seed {seed}) -> {args.output}")
    if len(frames) < args.n:
        log.warning(f"only {len(frames)} of {args.n}: some structures ran out of attempts")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from lamcsp.campaign import load_campaign
    from lamcsp.extras import check_campaign

    campaign = load_campaign(args.campaign)
    check_campaign(campaign)
    print(f"{args.campaign}: valid")
    print(campaign.summary())
    return 0


def _db_url(args: argparse.Namespace, campaign: Any) -> str | None:
    """The search's database: ``--db``, else ``$LAMCSP_DB_URL`` (not for resuming a run that keeps
    its rows in RUN/results.db), else None (RUN/results.db)."""
    import os

    from lamcsp.store import ENV_DB_URL, RunDir, has_password, read_database_file

    if args.db is not None:
        if has_password(args.db):
            log.warning("the password in --db is visible to other users (ps) and kept in shell history; "
                        "give it in %s, PGPASSWORD or ~/.pgpass instead", ENV_DB_URL)
        return str(args.db)
    url = os.environ.get(ENV_DB_URL) or None
    if url and args.resume:
        paths = RunDir(args.output if args.output is not None else campaign.output_dir)
        if read_database_file(paths) is None:
            return None  # the run keeps its rows in RUN/results.db
    return url


def cmd_search(args: argparse.Namespace) -> int:
    from lamcsp.campaign import load_campaign
    from lamcsp.parallel import MPIExecutor, mpi_world, worker_main
    from lamcsp.search import Search
    from lamcsp.store import redact_url

    comm = mpi_world()  # None: one process, the serial executor
    if args.shared_finetune or len(args.campaign) > 1:
        return _search_set(args, comm)
    if comm is not None and comm.Get_rank() != 0:
        return worker_main(comm)
    executor = MPIExecutor(comm) if comm is not None else None
    try:  # under MPI, whatever happens on rank 0, the workers are stopped
        from lamcsp.campaign_set import check_alone

        campaign = load_campaign(args.campaign[0])
        check_alone(campaign, args.campaign[0])
        potential = None
        if executor is not None:
            executor.configure(campaign)
            from lamcsp.potentials.registry import load_model

            # the coordinator needs the model's id and element list, not its speed: on the CPU
            potential = load_model(campaign.model.replace(device="cpu"))
        search = Search(campaign, args.output, resume=args.resume, db_url=_db_url(args, campaign),
                        potential=potential, executor=executor)  # progress lines: INFO, which --quiet hides
        state = search.run()
    finally:
        if executor is not None:
            executor.close()
    n = search.store.count(role="search")
    print(f"search {campaign.name!r} done: {state['generation']} generation(s), {n} relaxations stored "
          f"in {redact_url(search.store.url)}; report in {search.run_dir / 'report' / 'report.html'}")
    return 0


def _search_set(args: argparse.Namespace, comm: Any) -> int:
    """``lamcsp search A.yaml B.yaml --shared-finetune -o RUNSET`` (:mod:`lamcsp.campaign_set`),
    serially or under MPI (one executor that the campaigns share; the training on rank 0)."""
    from pathlib import Path

    from lamcsp.campaign import load_campaign
    from lamcsp.campaign_set import SUMMARY, CampaignSet
    from lamcsp.parallel import MPIExecutor, worker_main

    if comm is not None and comm.Get_rank() != 0:
        return worker_main(comm)
    executor = MPIExecutor(comm) if comm is not None else None
    try:  # under MPI, whatever happens on rank 0, the workers are stopped
        if not args.shared_finetune:
            raise SetupError("campaign", "several campaigns run together only as a set sharing their "
                                         "fine-tune iterations: add --shared-finetune (or run them apart)")
        if args.output is None:
            raise SetupError("--output", "a campaign set needs -o RUNSET (its campaigns go to RUNSET/<name>)")
        if args.db is not None:
            raise SetupError("--db", "a campaign set keeps one database per campaign in RUNSET/<name>; leave "
                                     "--db out")
        campaigns = [load_campaign(path) for path in args.campaign]
        potentials = None
        if executor is not None:
            from lamcsp.potentials.registry import load_model

            executor.configure(campaigns[0])  # the ranks' settings (parallel.*): the first campaign's
            # the coordinator needs each model's id and element list, not its speed: on the CPU
            loaded: dict[str, Any] = {}  # one per distinct model (a set's campaigns share one)
            potentials = {}
            for c in campaigns:
                cpu = c.model.replace(device="cpu")
                key = cpu.model_dump_json()
                if key not in loaded:
                    loaded[key] = load_model(cpu)
                potentials[c.name] = loaded[key]
        summary = CampaignSet(campaigns, args.output, resume=args.resume, sources=list(args.campaign),
                              executor=executor, potentials=potentials).run()
    finally:
        if executor is not None:
            executor.close()
    for name, entry in summary["campaigns"].items():
        print(f"campaign {name!r}: {entry.get('labels', 0)} labels, head {entry['head']}, report in "
              f"{Path(entry['run']) / 'report' / 'report.html'}")
    print(f"campaign set done; summary in {Path(args.output) / SUMMARY}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lamcsp.parallel import MPIExecutor, mpi_world, worker_main
    from lamcsp.verify import verify_run

    comm = mpi_world()
    if comm is not None and comm.Get_rank() != 0:
        return worker_main(comm)
    executor = MPIExecutor(comm) if comm is not None else None
    try:
        out = verify_run(args.run, oracle=args.oracle, top_k=args.top_k, window=args.window, mode=args.mode,
                         fmax=args.fmax, max_steps=args.max_steps, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    for label, c in out.items():
        tau = "-" if c.kendall_tau is None else f"{c.kendall_tau:.2f}"
        print(f"{label}: the model's top-1 {'agrees' if c.top1_agree else 'DISAGREES'} with the oracle "
              f"(Kendall tau {tau}, largest error {1000 * c.max_error:.1f} meV/atom); answer: row {c.answer}")
    print(f"report: {args.run}/report/report.html")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lamcsp.io import check_output_path
    from lamcsp.report import write_report

    if args.output is not None:
        check_output_path(args.output, "--output", directory=True)
    path = write_report(args.run, out_dir=args.output)
    print(f"report: {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from lamcsp.status import format_status, run_status

    st = run_status(args.run)
    print(json.dumps(st, indent=1) if args.json else format_status(st))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lamcsp.io import check_output_path
    from lamcsp.report import export

    check_output_path(args.output, "--output", directory=True)
    paths = export(args.run, top=args.top, fmt=args.format, out_dir=args.output)
    print(f"exported {len(paths)} file(s) to {args.output}")
    return 0


def cmd_relax(args: argparse.Namespace) -> int:
    from lamcsp.io import check_output_path, read_structures, result_frame, write_frames
    from lamcsp.potentials import load_potential
    from lamcsp.relax import Relaxer

    if not -1000.0 <= args.pressure <= 1000.0:
        raise SetupError(
            "--pressure", f"{args.pressure} GPa is outside the supported range [-1000, 1000] GPa"
        )
    check_output_path(args.output, "--output")  # before the work, not after it
    structures = read_structures(args.inputs)
    trust: dict[str, bool] = {}
    if args.trust_model:
        if args.model.partition(":")[0].strip().lower() not in ("chgnet", "sevennet", "mace"):
            raise SetupError("--trust-model", f"applies to chgnet, sevennet and mace model files "
                                              f"(chgnet:PATH, sevennet:PATH, mace:PATH), not {args.model!r}")
        trust["trusted"] = True
    potential = load_potential(args.model, device=args.device, **trust)
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


def _fail(text: str) -> None:
    """The command's last words: to stderr as they always were, and into the --log file."""
    print(text, file=sys.stderr)
    log.error(text, extra={"console": False})


def _setup_logging(args: argparse.Namespace) -> None:
    """Configure the ``lamcsp`` loggers (:mod:`lamcsp.log`): one log file, written by rank 0."""
    from lamcsp.log import configure
    from lamcsp.parallel import launcher_rank

    path = args.log if launcher_rank() == 0 else None
    try:
        configure(quiet=getattr(args, "quiet", False), log_file=path)
    except OSError as exc:
        raise SetupError("--log", f"cannot write {path!r} ({exc.strerror or exc})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("search", "verify"):
        from lamcsp.parallel import launcher_rank

        if launcher_rank() != 0:  # under mpiexec only `search` and `verify` use the other ranks
            return 0
    try:
        _setup_logging(args)
        return int(args.func(args) or 0)
    except SetupError as exc:
        _fail(f"lamcsp {args.command}: error in {exc.field}: {exc.message}")
        return 2
    except WorkerError as exc:
        last = exc.detail.strip().splitlines()[-3:] if exc.detail else []
        _fail(f"lamcsp {args.command}: {exc.message}. The campaign stopped; every result stored so far "
              "is kept, and the same command with --resume continues from the last checkpoint."
              + ("".join(f"\n  {line}" for line in last) if last else ""))
        return 1
    except KeyboardInterrupt:
        _fail(f"lamcsp {args.command}: interrupted")
        return 130
    finally:
        from lamcsp.log import unconfigure

        unconfigure()


if __name__ == "__main__":
    sys.exit(main())
