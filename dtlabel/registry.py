"""Name -> class tables that built-ins and plug-ins fill the same way (timm's ``register_model`` idea).

::

    HEADS = Registry("head kind", attribute="kind")

    @HEADS.register("interpreter")        # a built-in head registers itself like any plug-in
    class Interpreter(Head): ...

    HEADS.get("interpeter")               # ConfigError: unknown head kind 'interpeter' (did you mean: ...)

A registry records names in registration order (iteration, :meth:`items`); :meth:`names` lists them
sorted, for messages and ``--help`` texts. Registering another class under a taken name is a
programming error (``ValueError``); asking for an unknown name is a user error (``ConfigError``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from dtlabel.errors import ConfigError, did_you_mean

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes by name for one ``kind`` of component (``"teacher family"``, ``"head kind"``).

    Args:
        kind: what a name names, for messages (``"unknown {kind} 'x'"``).
        attribute: a class attribute that :meth:`register` sets to the registered name (``"family"``,
            ``"kind"``), so an object can say which name rebuilds it.
        also: names accepted where the registry is used but not registered (``"auto"``); they are
            listed in the unknown-name message.
    """

    def __init__(self, kind: str, *, attribute: str | None = None, also: Sequence[str] = ()) -> None:
        self.kind = kind
        self.attribute = attribute
        self.also = tuple(also)
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: add the class under ``name``; ``ValueError`` if ``name`` is taken by another."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")

        def add(cls: T) -> T:
            taken = self._classes.get(name)
            if taken is not None and taken is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered to {taken.__name__}")
            if self.attribute:
                own = cls.__dict__.get(self.attribute)
                if own not in (None, "", name):
                    raise ValueError(f"{cls.__name__}.{self.attribute} is {own!r} but it is registered as {name!r}")
                setattr(cls, self.attribute, name)
            self._classes[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its class (tests and plug-in reloads); ``KeyError`` if absent."""
        return self._classes.pop(name)

    def get(self, name: str) -> T:
        """The class registered as ``name``; ``ConfigError`` naming the close matches otherwise."""
        if name not in self._classes:
            choices = [*self.names(), *self.also]
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(str(name), choices)}; available: {', '.join(choices)}"
            )
        return self._classes[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._classes)

    def items(self) -> list[tuple[str, T]]:
        """``(name, class)`` pairs in registration order."""
        return list(self._classes.items())

    def __getitem__(self, name: str) -> T:
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._classes))

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
