"""Registries fail loudly: a listed section or command module that does not exist is an error."""

from __future__ import annotations

import sys
import types

import pytest

from app import cli
from app.web import sections
from app.web.sections import NeuronSection, section_loader


def test_every_listed_section_has_a_loader() -> None:
    for section in sections.SECTIONS:
        assert callable(section_loader(section)), section.name


def test_a_section_whose_module_is_missing_raises() -> None:
    with pytest.raises(ModuleNotFoundError):
        section_loader(NeuronSection("no_such_section", "Nothing", 99))


def test_a_section_module_without_load_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "app.web.sections.half_done", types.ModuleType("half_done"))
    with pytest.raises(AttributeError, match="load"):
        section_loader(NeuronSection("half_done", "Half done", 99))


def test_every_cli_command_module_exists_and_a_missing_one_raises() -> None:
    for _, target, _ in cli.COMMANDS:
        assert cli._require(target) == target.split(":")[0]  # noqa: SLF001
    with pytest.raises(ModuleNotFoundError, match="precompute.no_such_stage"):
        cli._require("precompute.no_such_stage:add_arguments:run")  # noqa: SLF001


def test_a_cli_command_whose_module_is_missing_fails_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = (("precompute", "nothing"), "precompute.no_such_stage:add_arguments:run", "gone")
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, missing])
    with pytest.raises(ModuleNotFoundError, match="precompute.no_such_stage"):
        cli.build_parser()


def test_every_demo_stage_names_a_command_and_an_unknown_one_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for stage in cli.DEMO_STAGES:
        assert cli._demo_command(stage) == tuple(stage[:2])  # noqa: SLF001
    with pytest.raises(LookupError, match="precompute no_such_stage"):
        cli._demo_command(["precompute", "no_such_stage"])  # noqa: SLF001
    # the demo build stops at it before running anything (it is never skipped silently)
    monkeypatch.setattr(cli, "DEMO_STAGES", [["precompute", "no_such_stage"], *cli.DEMO_STAGES])
    args = cli.build_parser().parse_args(["demo", "--db", str(tmp_path / "demo.db"), "--no-serve"])
    with pytest.raises(LookupError, match="no_such_stage"):
        cli.run_demo(args)
    assert not (tmp_path / "demo.db").exists()
