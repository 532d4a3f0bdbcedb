"""Checks for notebook parameters, so a bad papermill ``-p`` stops at once with a message that
names the parameter, its value and what is allowed (config dataclasses validate their own
fields; this covers the loose parameters around them)."""
from __future__ import annotations

from pathlib import Path


class ParameterError(ValueError):
    pass


def check(name: str, value, kind: type | tuple = None, minimum=None, choices=None, exists: bool = False):
    """Raise ParameterError naming ``name`` if ``value`` breaks a rule; returns ``value``."""
    if kind is not None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise ParameterError(f"parameter {name}={value!r}: expected {names}, got {type(value).__name__}")
    if minimum is not None and not value >= minimum:          # (NaN is not >= anything)
        raise ParameterError(f"parameter {name}={value!r}: must be >= {minimum}")
    if choices is not None and value not in choices:
        raise ParameterError(f"parameter {name}={value!r}: allowed values are {list(choices)}")
    if exists and not Path(value).exists():
        raise ParameterError(f"parameter {name}={value!r}: no such file or directory")
    return value


def check_local_or_hub(name: str, value: str) -> str:
    """A local path that exists, a model shipped in the package (``models.PRETRAINED``), or
    something shaped like a hub id ``owner/name``."""
    from .config import is_hub_id
    from .models import PRETRAINED

    check(name, value, str)
    if Path(value).exists() or value in PRETRAINED:
        return value
    if is_hub_id(value):
        return value            # a hub id: from_pretrained downloads it (needs network)
    raise ParameterError(f"parameter {name}={value!r}: no such file or directory {Path(value).absolute()}, "
                         f"and not a hub id like 'owner/name'")
