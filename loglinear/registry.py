"""One small registry class: every table of named variants in loglinear is a
:class:`Registry` (losses, balls, estimators, objectives, surrogate forms), so lookups,
error messages and registration work the same everywhere and no caller branches on a
name."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered (a ``KeyError`` for mappings, a ``ValueError`` for
    callers validating user input)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Mapping, Generic[T]):
    """A read-mostly mapping ``name -> T`` with one way to register and one error message.

    Args:
        kind: what the entries are, for messages ("loss", "ball", "estimator", ...).
        items: initial entries.
    """

    def __init__(self, kind: str, items: Mapping[str, T] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        for name, item in (items or {}).items():
            self.register(name, item)

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name`` (a name may be registered once); returns ``item``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str, default=None) -> T:  # type: ignore[override]
        """The entry for ``name``; unknown names raise :class:`UnknownNameError` listing
        the registered ones (``default`` is accepted for Mapping compatibility only when
        given explicitly)."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            if default is not None:
                return default
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: "
                                   f"{sorted(self._items)}") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


def named_hyperparameter(what: str, expected: str | None, given: Mapping[str, float | None],
                         *, deprecated: float | None = None, old_name: str = "param",
                         stacklevel: int = 2) -> dict:
    """Check the hyperparameter keywords passed to an entry that takes one (or none).

    Args:
        what: the entry, for messages (e.g. ``"objective 'wdpo'"``).
        expected: the name of its one hyperparameter (``"rho"``, ``"tau"``, ``"radius"``)
            or None.
        given: the keywords the caller passed (``None`` values are "not given").
        deprecated: a value passed under the old generic name ``old_name``; it warns and
            stands for ``expected``.

    Returns:
        The given keywords, at most ``{expected: value}``; any other name is an error.
    """
    out = {k: v for k, v in given.items() if v is not None}
    if deprecated is not None:
        warnings.warn(f"{old_name}= is deprecated; pass the hyperparameter of {what} by name "
                      f"({expected or 'none'})", DeprecationWarning, stacklevel=stacklevel + 1)
        if expected is not None:
            out.setdefault(expected, deprecated)
    extra = sorted(set(out) - {expected})
    if extra:
        raise ValueError(f"{what} takes {expected or 'no hyperparameter'}, got {extra}")
    return out
