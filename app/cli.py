"""The ``conceptscope`` console script.

Each command lives in its own module with an ``add_...(parser)`` and a ``run...(args) -> int``
function, both named in ``COMMANDS``; this file only wires them together. ``demo`` chains the
precompute stages into ``data/demo.db`` and serves it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _serves(argv: Sequence[str]) -> bool:
    """Whether this command line is ``serve``."""
    words = [a for a in argv if not a.startswith("-")]
    return bool(words) and words[0] == "serve"


# Before torch is imported (OpenMP reads it once). A server waits passively: OpenMP threads that
# spin while waiting made a 2-thread RN50 forward take 1-5 s instead of 0.19 s next to the event
# loop on a shared, busy CPU. Batch commands (precompute, training, evaluation) keep OpenMP's
# default: passive waiting made them 1.1-2.3x slower on a quiet 2-core CPU (RN50 forward 0.30 s
# against 0.13 s; feature visualization of the demo's diversity sets 13.5 s against 9.4 s per 64
# images). ``demo`` builds with the default and then re-executes itself as ``serve``.
if _serves(sys.argv[1:]):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from app.models import ModelLoadError  # noqa: E402

# (command words, "module:add_function:run_function", help). ``demo`` runs DEMO_STAGES in order.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("serve",), "app.web.serve:add_arguments:run", "serve an index database in the browser"),
    (("precompute", "activations"), "precompute.activations:add_arguments:run",
     "top-k activations per neuron"),
    (("precompute", "featurevis"), "precompute.featurevis:add_arguments:run", "feature visualizations"),
    (("precompute", "words"), "precompute.words:add_arguments:run", "rendered-word responses per neuron"),
    (("precompute", "labels"), "precompute.labels:add_arguments:run",
     "automatic labels and multimodality"),
    (("precompute", "summaries"), "precompute.summaries:add_arguments:run",
     "what neuron pages need (sample columns, related units), computed once"),
    (("labels", "import"), "precompute.labels_io:add_import_arguments:run_import",
     "import labels from a CSV/TSV file"),
    (("labels", "set"), "precompute.labels_io:add_set_arguments:run_set", "set a manual label"),
    (("train-demo",), "precompute.train_demo:add_arguments:run", "train the bundled demo CLIP"),
    (("eval-demo",), "precompute.eval_demo:add_arguments:run",
     "evaluate the demo CLIP on held-out renderings"),
    (("export",), "app.db.export:add_arguments:run",
     "export units, labels, top examples and words (jsonl, csv or parquet)"),
    (("eval-labels",), "precompute.eval_labels:add_arguments:run",
     "title labels against the demo's ground truth (or a --ground-truth-csv)"),
    (("eval-search",), "precompute.eval_search:add_arguments:run",
     "zero-shot search for each concept word against the demo card's named neurons"),
    (("eval-featurevis",), "precompute.featurevis_quality:add_arguments:run",
     "feature-visualization quality checks on the demo CLIP"),
    (("dataset", "shard"), "precompute.shard_writer:add_arguments:run",
     "write webdataset tar shards from an image folder or list"),
    (("db", "upgrade"), "app.db.commands:add_upgrade_arguments:run_upgrade",
     "migrate a database to the newest schema (Alembic)"),
    (("db", "current"), "app.db.commands:add_current_arguments:run_current",
     "a database's schema revision (exit 1 if not the newest)"),
    (("db", "copy"), "app.db.commands:add_copy_arguments:run_copy",
     "copy an index into an empty database (e.g. SQLite to PostgreSQL)"),
]

DEMO_DB = Path("data/demo.db")
DEMO_DIVERSITY = 3
"""Diversity images per last-block neuron in the demo (the stage's default is 4): with 3 the whole
demo build stays inside 10 minutes on a 2-core CPU (measured on a quiet host: 8 min 28 s with 3,
9 min 17 s with 4)."""
DEMO_STAGES: list[list[str]] = [
    ["precompute", "activations", "--model", "demo", "--dataset", "demo:2000"],
    ["precompute", "summaries"],
    ["precompute", "featurevis", "--diversity", str(DEMO_DIVERSITY)],
    ["precompute", "words"],
    ["precompute", "labels", "--probe", "demo"],
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with a sub-parser per available command."""
    parser = argparse.ArgumentParser(prog="conceptscope", description=__doc__)
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}

    demo = top.add_parser("demo", help="build data/demo.db if missing, then serve it")
    demo.add_argument("--db", default=str(DEMO_DB),
                      help="database file or SQLAlchemy URL (default: %(default)s)")  # fmt: skip
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--rebuild", action="store_true", help="run every stage again (resumes)")
    demo.add_argument("--no-serve", action="store_true", help="build only")
    demo.set_defaults(handler=run_demo)

    for words, target, help_text in COMMANDS:
        module_name, add_name, run_name = target.split(":")
        module = importlib.import_module(_require(target))
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_text)
        else:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", required=True)
            sub = groups[words[0]].add_parser(words[1], help=help_text)
        getattr(module, add_name)(sub)
        sub.set_defaults(handler=getattr(module, run_name))
    return parser


def run_demo(args: argparse.Namespace) -> int:
    """Build the demo database stage by stage (each stage resumes / is a no-op when done)."""
    db: Path | str = args.db if "://" in args.db else Path(args.db)  # a URL is used as-is
    if isinstance(db, str) or args.rebuild or not db.exists() or not _demo_complete(db):
        # a database URL (e.g. PostgreSQL) has no marker file: every stage runs (a no-op when done)
        parser = build_parser()
        for stage in DEMO_STAGES:
            _demo_command(stage)  # a stage that names no command raises (never skipped)
            print(f"== conceptscope {' '.join(stage[:2])}", flush=True)
            stage_args = parser.parse_args([*stage, "--db", str(db)])
            code = stage_args.handler(stage_args)
            if code:
                return code
        if isinstance(db, Path):
            _mark_demo_complete(db)
    if args.no_serve:
        return 0
    serve = ["serve", "--db", str(db), "--host", args.host, "--port", str(args.port)]
    if os.environ.get("OMP_WAIT_POLICY") is None:
        # this process runs OpenMP with batch settings: serve from a fresh one that waits passively
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "app.cli", *serve])
    serve_args = build_parser().parse_args(serve)
    return serve_args.handler(serve_args)


def _require(target: str) -> str:
    """The module of a registered command (``"module:add:run"``). It must exist, so a missing one
    raises (a typo or a deleted module in ``COMMANDS`` is a bug, never a silently absent command)."""
    module = target.split(":")[0]
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"COMMANDS in app/cli.py names {module}, which does not exist", name=module)
    return module


def _demo_command(stage: Sequence[str]) -> tuple[str, ...]:
    """The command words of a ``DEMO_STAGES`` entry; one that names no command in ``COMMANDS``
    raises (the demo never skips a stage silently)."""
    for words, target, _ in COMMANDS:
        if tuple(stage[: len(words)]) == words:
            _require(target)
            return words
    raise LookupError(f"DEMO_STAGES in app/cli.py names {' '.join(stage[:2])!r}, which is no command")


def _demo_marker(db: Path) -> Path:
    return db.with_name(db.name + ".complete")


def _demo_complete(db: Path) -> bool:
    marker = _demo_marker(db)
    return marker.exists() and marker.read_text() == _demo_stage_names()


def _mark_demo_complete(db: Path) -> None:
    _demo_marker(db).write_text(_demo_stage_names())


def _demo_stage_names() -> str:
    """What the marker of a complete demo database records: its stages, one a line."""
    return "\n".join(" ".join(stage[:2]) for stage in DEMO_STAGES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conceptscope`` console script."""
    args = build_parser().parse_args(argv)
    if _rank_skips(args):
        return 0
    try:
        return int(args.handler(args) or 0)
    except ModelLoadError as exc:
        print(f"conceptscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conceptscope: interrupted (progress is saved; run the same command to resume)",
              file=sys.stderr)
        return 130


def _rank_skips(args: argparse.Namespace) -> bool:
    """Under torchrun, a stage that does not split its work runs on rank 0 only."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if world in ("", "1") or rank in ("", "0") or args.command != "precompute":
        return False
    from precompute.distributed import DISTRIBUTED_STAGES

    if args.subcommand in DISTRIBUTED_STAGES:
        return False
    print(f"rank {rank}: precompute {args.subcommand} runs on rank 0 only", file=sys.stderr)
    return True


if __name__ == "__main__":
    sys.exit(main())
