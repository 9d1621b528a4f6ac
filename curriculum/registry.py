"""Name -> implementation registries with suggestions for misspelt names."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def nearest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for error messages, or '' if nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Registry(Generic[T]):
    """A dict from config name to implementation, filled by a decorator."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self.entries:
            raise KeyError(
                f"unknown {self.what} {name!r}{nearest(str(name), self.entries)}; "
                f"choose one of {sorted(self.entries)}"
            )
        return self.entries[name]

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        """Instantiate `name` with params; a bad parameter names the kind and its parameters."""
        factory: Any = self.get(name)
        try:
            return factory(*args, **params)
        except TypeError as err:
            raise TypeError(f"{self.what} {name!r}: {err}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)
