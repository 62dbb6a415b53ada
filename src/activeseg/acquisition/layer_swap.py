"""Swapping layers of a model, in place, for equivalents that run faster (the CPU scoring copy's sub-pixel
convolutions and channels-last instance norms)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_layers(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace every submodule of ``model`` for which ``replacement`` gives a module (None: keep it); returns how
    many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = replacement(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    return replaced
