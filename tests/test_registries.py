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
    assert all(cli._has(target) for _, target, _ in cli.COMMANDS)  # noqa: SLF001
    with pytest.raises(ModuleNotFoundError, match="precompute.no_such_stage"):
        cli._has("precompute.no_such_stage:add_arguments:run")  # noqa: SLF001
