"""The one capture API: record values inside a model by hook name, in a context manager.

A hook name is a module path inside the module you hook, as in TransformerLens, with a suffix
that says which value is recorded:

* ``"layer4.5.act3:in"``: the input of module ``layer4.5.act3`` (a forward pre-hook). Inputs are
  cloned, because the module may change them in place (ResNet's ``act3`` ReLU does).
* ``"layer4.5"`` (or ``"layer4.5:out"``): the output of module ``layer4.5`` (a forward hook).

Everything in Conceptscope hooks ``model.visual``, so every name is relative to the vision
tower: an indexed layer ``layer4.5`` of a ResNet is read at ``layer4.5.act3:in``
(:attr:`app.models.LayerInfo.hook_name`), the diversity term of feature visualization at
``layer2``, the demo model's training and evaluation at the same names.

:func:`hooks` always removes its hooks, also when the forward pass raises; :func:`run_to` is the
truncated forward pass (stop once every requested value is recorded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

INPUT, OUTPUT = ":in", ":out"


class StopForward(Exception):
    """Raised by a hook to end the forward pass once every requested value is recorded."""


def split_hook_name(name: str) -> tuple[str, bool]:
    """``"layer4.5.act3:in"`` → (``"layer4.5.act3"``, records the input: ``True``)."""
    if name.endswith(INPUT):
        return name[: -len(INPUT)], True
    if name.endswith(OUTPUT):
        return name[: -len(OUTPUT)], False
    return name, False


@contextmanager
def hooks(
    root: nn.Module,
    names: Sequence[str] | Mapping[str, str],
    *,
    stop: bool = False,
    detach: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the values ``names`` (hook names inside ``root``) during forward passes in the block.

    Yields a dict ``hook name -> tensor``, overwritten by each forward pass (with a mapping
    ``key -> hook name`` for ``names``, the dict is keyed by its keys). ``stop=True`` raises
    :class:`StopForward` once every name is recorded (use :func:`run_to`). ``detach=False`` keeps
    the autograd graph (feature visualization optimises through it). ``transform`` maps each
    recorded tensor (e.g. a max over positions) before it is stored. A name that is not a module
    of ``root`` raises ``AttributeError`` before any hook is placed.
    """
    store: dict[str, torch.Tensor] = {}
    keyed = dict(names) if isinstance(names, Mapping) else {name: name for name in names}
    wanted = set(keyed)
    points = [(key, *split_hook_name(name)) for key, name in keyed.items()]
    modules = [(key, root.get_submodule(path), is_input) for key, path, is_input in points]
    handles = []

    def record(name: str, value: torch.Tensor) -> None:
        value = value.detach().clone() if detach else value.clone()
        store[name] = transform(value) if transform is not None else value
        if stop and wanted.issubset(store):
            raise StopForward

    try:
        for name, module, is_input in modules:
            if is_input:
                handles.append(module.register_forward_pre_hook(_pre_hook(name, record)))
            else:
                handles.append(module.register_forward_hook(_post_hook(name, record)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _pre_hook(name: str, record: Any) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        record(name, args[0])

    return hook


def _post_hook(name: str, record: Any) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        record(name, output)

    return hook


def run_to(
    root: nn.Module, inputs: torch.Tensor, names: Sequence[str] | Mapping[str, str], *, detach: bool = True
) -> dict[str, torch.Tensor]:
    """The truncated forward pass: run ``root`` on ``inputs`` only as far as the last of ``names``.

    Returns ``hook name -> tensor`` (keyed like :func:`hooks`). With ``detach=False`` gradients
    flow back to ``inputs``.
    """
    with hooks(root, names, stop=True, detach=detach) as store:
        try:
            root(inputs)
        except StopForward:
            pass
        return dict(store)
