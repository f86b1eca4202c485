"""Changing a module's class to a subclass that mixes behaviour in (checkpointing, a planned forward), and back:
the module tree, parameters and state-dict keys stay as they are. Shared by graph plans and module regions."""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

_CLASSES: dict[tuple[type, type], type] = {}


def retype(module: nn.Module, mixin: type, prefix: str) -> None:
    """Make ``module``'s class ``<prefix><Cls>``, deriving from ``mixin`` then its own class (one class per pair,
    except for a GraphModule, whose class is its own per instance: that one is not cached, so it goes with it)."""
    base = type(module)
    if issubclass(base, mixin):
        return
    if issubclass(base, fx.GraphModule):
        module.__class__ = type(f"{prefix}{base.__name__}", (mixin, base), {"__module__": mixin.__module__})
        return
    if (base, mixin) not in _CLASSES:
        _CLASSES[base, mixin] = type(f"{prefix}{base.__name__}", (mixin, base), {"__module__": mixin.__module__})
    module.__class__ = _CLASSES[base, mixin]


def unretype(module: nn.Module, mixin: type) -> None:
    """Undo ``retype`` in place (nothing if ``module`` was not retyped with ``mixin``)."""
    if isinstance(module, mixin):
        module.__class__ = type(module).__mro__[2]


def copy_retyped(module: nn.Module, memo: dict[int, Any], mixin: type, prefix: str) -> nn.Module:
    """A deep copy of a retyped module, retyped the same way: its own class is copied (a GraphModule's copy makes
    a class of its own, which must not derive from the retyped one: its forward would recurse), then mixed again."""
    retyped = type(module)
    module.__class__ = retyped.__mro__[2]
    try:
        twin = copy.deepcopy(module, memo)
    finally:
        module.__class__ = retyped
    retype(twin, mixin, prefix)
    return twin
