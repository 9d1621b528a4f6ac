"""Loading a run config: defaults <- YAML preset (and its `base` chain) <- dotted
CLI overrides, then renamed keys migrated, paths made absolute and the whole
validated (validate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gradus.curriculum.registry import is_plugin, resolve_plugin
from gradus.launch.config.schema import Config, build, to_dict
from gradus.launch.config.validate import validate
from gradus.launch.errors import GradusError, note_once
from gradus.trainer.config import ImportanceConfig


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
            if node is None:
                raise GradusError(f"override {dotted!r}: {'.'.join(parts[: i + 1])} is not a valid list index")
        else:
            if node.get(part) is None:  # a section not given yet, or an optional one left unset (trainer.lora)
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        if not parts[-1].isdigit() or int(parts[-1]) >= len(node):
            raise GradusError(f"override {dotted!r}: {parts[-1]!r} is not a valid list index")
        node[int(parts[-1])] = value
    elif isinstance(node, dict):
        node[parts[-1]] = value
    else:
        raise GradusError(f"override {dotted!r}: {'.'.join(parts[:-1])} is not a section")


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML preset as a dict; `base: other.yaml` (relative to the file) is
    read first and this file's keys are merged on top."""
    if not path.is_file():
        raise GradusError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise GradusError(f"config file {path}: 'base' chain loops back to itself")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise GradusError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise GradusError(f"config file {path}: expected a mapping at the top level")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    raw = _read_preset(path.parent / str(base), seen + (path.resolve(),))
    _merge(raw, loaded)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML preset (and its bases) <- `key.sub=value` overrides, validated."""
    raw = to_dict(Config())
    if path is not None:
        _merge(raw, _read_preset(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise GradusError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else "")
    cfg = build(Config, raw, "")
    legacy = _migrate(cfg)
    _resolve_paths(cfg)
    validate(cfg, legacy_curriculum=legacy)
    return cfg


def _resolve_paths(cfg: Config) -> None:
    """Plugin files and data files made absolute against the launch directory
    before anything is sent to actors (other nodes, other working directories)."""
    for dist in cfg.data.distributions:
        dist.source, dist.verifier = (resolve_plugin(v) if is_plugin(v) else v for v in (dist.source, dist.verifier))
        if dist.source == "file" and isinstance(dist.params.get("path"), str):
            dist.params["path"] = str(Path.cwd() / Path(dist.params["path"]).expanduser())
    if is_plugin(cfg.curriculum.bandit.get("kind")):
        cfg.curriculum.bandit["kind"] = resolve_plugin(cfg.curriculum.bandit["kind"])
    for spec in [*cfg.curriculum.filters, cfg.curriculum.budget or {}, cfg.curriculum.prompts]:
        if is_plugin(spec.get("kind")):
            spec["kind"] = resolve_plugin(spec["kind"])


def _migrate(cfg: Config) -> bool:
    """Keys that were renamed keep working, with one note; a value given under
    the new name wins (a resumed run's config.yaml still holds the old key).
    curriculum.kind/params (the one spec that was {kind, params}) become
    curriculum.bandit {kind, **params}, the shape of every other spec; they stay
    readable as bandit's kind and parameters. When given they win over bandit (an
    ablation cell's old-style keys override its preset's bandit). Returns whether
    the old keys were used."""
    cur = cfg.curriculum
    legacy = cur.kind is not None or cur.params is not None
    if legacy:
        note_once(
            "curriculum.kind and curriculum.params are now one spec, curriculum.bandit: {kind: ..., **params} "
            "(the shape of filters, budget and prompts); the old keys still work"
        )
        kept = {k: v for k, v in cur.bandit.items() if k != "kind"}
        if cur.kind not in (None, cur.bandit.get("kind")):  # another kind: its parameters never mix with these
            kept = {}
        cur.bandit = {"kind": cur.kind or cur.bandit.get("kind", "uniform"), **kept, **(cur.params or {})}
    cur.kind, cur.params = cur.bandit.get("kind"), {k: v for k, v in cur.bandit.items() if k != "kind"}
    old, importance = cfg.trainer.importance_cap, cfg.trainer.importance
    if old is not None:
        explicit = importance.cap != ImportanceConfig().cap
        print(
            "gradus: trainer.importance_cap is now trainer.importance.cap; "
            f"using cap={importance.cap if explicit else old}",
            flush=True,
        )
        importance.cap, cfg.trainer.importance_cap = (importance.cap if explicit else old), None
    return legacy


def _merge(base: dict, update: dict) -> None:
    """Recursive merge so a preset only names what it changes. Lists and `params`
    / `prompts` mappings replace: a kind's parameters never mix with another kind's."""
    for key, value in update.items():
        if (
            isinstance(value, dict)
            and isinstance(base.get(key), dict)
            and key not in ("params", "prompts", "bandit", "budget")
        ):
            _merge(base[key], value)
        else:
            base[key] = value
