"""Name -> implementation registries, plugins by path, and one-line errors.

Every registry (curricula, filters, budget schedules, data sources, verifiers)
takes either a registered name or a plugin `path/to/file.py:Name`, loaded from
that file (`load_plugin`) and checked against the registry's interface before
anything runs, so a broken plugin fails at start-up saying what is missing.
`build` checks parameters against the implementation's signature: an unknown
one is a single line listing the valid names with a did-you-mean suggestion.

Where this lives: this module imports nothing from gradus, so it is the bottom
of the import graph. `curriculum` (which imports neither `rollout` nor
`trainer`), `rollout/rewards.py` (file verifiers) and `launch` all use it, and
every import still points downward: launch -> rollout -> curriculum.registry.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import inspect
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")
_MODULES: dict[Path, Any] = {}
IMPORT_TIMEOUT_S = 120.0  # importing a plugin file (it may import heavy libraries); as the reward process's load
ALL: dict[str, "Registry"] = {}  # every registry by what it names, in creation order (`gradus list`)


class UnknownEntry(KeyError, ValueError):
    """A name no registry entry has; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def nearest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for error messages, or '' if nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def is_plugin(name: Any) -> bool:
    """`path/to/file.py:Name` (a plugin by path) rather than a registered name."""
    return isinstance(name, str) and ".py:" in name


def split_plugin(spec: str) -> tuple[Path, str]:
    path, _, attr = spec.rpartition(":")
    return Path(path).expanduser(), attr


def resolve_plugin(spec: str, base: Path | None = None) -> str:
    """The spec with its file made absolute (against `base`, default the current
    directory): actors on other nodes must not depend on this process's cwd."""
    path, attr = split_plugin(spec)
    return f"{(base or Path.cwd()) / path if not path.is_absolute() else path}:{attr}"


def load_plugin(spec: str, what: str = "plugin") -> Any:
    """The object `Name` defined in `file.py` of `file.py:Name` (each file is
    imported once per process, verl's get_custom_reward_fn way; its directory
    joins sys.path so it can import its neighbours)."""
    path, attr = split_plugin(spec)
    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"{what} {spec!r}: file {path} does not exist")
    if path not in _MODULES:
        if str(path.parent) not in sys.path:  # a plugin may import the modules beside it
            sys.path.append(str(path.parent))
        name = f"gradus_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickle look their module up here
        failure = _import_with_deadline(module_spec.loader, module)
        if failure is not None:
            del sys.modules[name]
            raise ValueError(f"{what} {spec!r}: importing {path} {failure}".splitlines()[0])
        _MODULES[path] = module
    module = _MODULES[path]
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        raise ValueError(f"{what} {spec!r}: {path} defines no {attr!r}{nearest(attr, names)}")
    return getattr(module, attr)


def _import_with_deadline(loader: Any, module: Any) -> str | None:
    """Run a plugin file's top level in a thread, IMPORT_TIMEOUT_S at most: how it
    failed (any exception, SystemExit included; a hang), or None. The user's code
    can neither end the process nor hang it; Ctrl-C still reaches the main thread."""
    outcome: list[str | None] = []

    def run() -> None:
        try:
            loader.exec_module(module)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - sys.exit() or anything else in user code is a failure
            outcome.append(f"failed: {type(err).__name__}: {err}")

    thread = threading.Thread(target=run, name="gradus-plugin-import", daemon=True)
    thread.start()
    thread.join(IMPORT_TIMEOUT_S)
    if thread.is_alive():
        return f"did not finish within {IMPORT_TIMEOUT_S:g} s (does it wait or loop at import time?)"
    return outcome[0] if outcome else "failed"


def parameters(factory: Any, skip: int) -> tuple[list[str], list[str], bool]:
    """(keyword parameters after the first `skip` positional ones, the required
    ones among them, whether it takes **kwargs)."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return [], [], True
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][skip:]
    required = [p.name for p in named if p.default is p.empty]
    return [p.name for p in named], required, any(p.kind is p.VAR_KEYWORD for p in params)


class Registry(Generic[T]):
    """A dict from config name to implementation, filled by a decorator (or
    `add`, for choices whose entry is a one-line description). `interface(obj)`
    lists what a plugin lacks (empty: it fits); `plugins=False` for choices that
    take no plugin by path. Every registry is listed in ALL."""

    def __init__(
        self, what: str, interface: Callable[[Any], list[str]] | None = None, plugins: bool = True, positional: int = 0
    ) -> None:
        """`positional`: leading arguments gradus passes itself (not config parameters)."""
        self.what = what
        self.positional = positional
        self.interface = interface
        self.plugins = plugins
        self.entries: dict[str, T] = {}
        ALL[what] = self

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.entries[name] = obj
            return obj

        return add

    def add(self, name: str, obj: T) -> T:
        self.entries[name] = obj
        return obj

    def describe(self, name: str) -> str:
        """One line: the entry's parameters with their defaults, or its description."""
        obj: Any = self.entries[name]
        if isinstance(obj, str):
            return obj
        try:
            params = list(inspect.signature(obj).parameters.values())[self.positional :]
        except (TypeError, ValueError):
            return ""
        shown = [
            p.name if p.default is p.empty else f"{p.name}={p.default!r}"
            for p in params
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        doc = (inspect.getdoc(obj) or "").split("\n")[0]
        return f"({', '.join(shown)})" + (f"  {doc}" if doc else "")

    def get(self, name: str) -> T:
        if is_plugin(name) and self.plugins:
            obj = load_plugin(name, self.what)
            missing = self.interface(obj) if self.interface else []
            if missing:
                raise ValueError(f"{self.what} plugin {name!r} does not fit: {'; '.join(missing)}")
            return obj
        if name not in self.entries:
            if not self.plugins:  # a setting's value, e.g. trainer.kl_in
                raise UnknownEntry(
                    f"unknown value {name!r}{nearest(str(name), self.entries)}; choose one of {sorted(self.entries)}"
                )
            raise UnknownEntry(
                f"unknown {self.what} {name!r}{nearest(str(name), self.entries)}; "
                f"choose one of {sorted(self.entries)} or a plugin path/to/file.py:Name"
            )
        return self.entries[name]

    def check_params(self, name: str, skip: int, params: dict) -> None:
        """One line for an unknown or missing parameter, listing the valid ones."""
        valid, required, any_keyword = parameters(self.get(name), skip)
        listing = f"valid parameters: {', '.join(valid) if valid else 'none'}"
        for key in params:
            if key not in valid and not any_keyword:
                raise TypeError(f"{self.what} {name!r}: unknown parameter {key!r}{nearest(str(key), valid)}; {listing}")
        missing = [key for key in required if key not in params]
        if missing:
            raise TypeError(f"{self.what} {name!r}: missing parameter {', '.join(map(repr, missing))}; {listing}")

    def build(self, name: str, *args: Any, **params: Any) -> Any:
        """Instantiate `name` with params; a bad parameter names the kind and its parameters."""
        self.check_params(name, len(args), params)
        factory: Any = self.get(name)
        try:
            return factory(*args, **params)
        except TypeError as err:
            raise TypeError(f"{self.what} {name!r}: {err}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(self.entries)
