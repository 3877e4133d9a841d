"""Reading, overriding, validating and writing run configs.

Precedence: task defaults < preset < YAML file < CLI overrides. Validation
errors become one `UserError` that names the key (and a close match).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.presets import PRESETS, apply_preset
from tunelab.config.schema import RunConfig
from tunelab.errors import UserError, did_you_mean
from tunelab.io import atomic_write_text


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (task, model, data, train, ...)")
    return data


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 3, 1e-4, true, [a, b]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str) and part == "task":
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise UserError(f"--set {dotted}: `{part}` is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got `{item}`")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out


def build_config(raw: dict | None = None, overrides: dict[str, Any] | None = None, source: str = "config") -> RunConfig:
    """Merge raw YAML data with dotted overrides, fill the preset, validate."""
    tree = _deepcopy(raw or {})
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, dotted, value)
    if "task" not in tree:
        raise UserError(f"{source}: missing `task` (e.g. `task: sft`; see `tunelab tasks`)")
    train = tree.get("train") or {}
    if not isinstance(train, dict):
        raise UserError(f"{source}: `train` must be a mapping")
    preset = train.get("preset", "balanced")
    if preset not in PRESETS:
        raise UserError(f"{source}: unknown preset `{preset}`{did_you_mean(preset, PRESETS)}; choose from {', '.join(PRESETS)}")
    tree["train"] = apply_preset(train, preset)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    raw = read_yaml(path) if path else {}
    return build_config(raw, overrides, source=str(path) if path else "config")


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # field_validator wrappers add the task class name to the location; drop it.
        loc = [p for p in loc if not p[:1].isupper()]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            lines.append(f"{source}: unknown key `{key}`{did_you_mean(loc[-1], known)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: `{key}`: {msg}" if key else f"{source}: {msg}")
    return "; ".join(lines)


def _known_keys(section_path: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in section_path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if part == "task":
            return []  # task keys depend on the plug-in; the message still names the key
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _deepcopy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deepcopy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deepcopy(v) for v in tree]
    return tree
