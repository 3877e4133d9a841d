"""Reading, overriding, validating and writing run configs.

Precedence: task defaults < preset < YAML file < CLI overrides. Validation
errors become one `UserError` that names the key (and a close match) and where
its value came from: the YAML file, or the command line (`--set`, options).
YAML is read with `safe_load` only: no tag ever constructs objects or runs code.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
import yaml.constructor
from pydantic import BaseModel, ValidationError

from tunelab.config.presets import PRESETS, apply_preset
from tunelab.config.schema import RunConfig
from tunelab.errors import UserError, did_you_mean
from tunelab.io import atomic_write_text
from tunelab.io.files import read_user_file
from tunelab.plugins import load_task_class


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; every problem is one UserError naming the file (and line, column)."""
    path = Path(path)
    raw = read_user_file(path, "config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not UTF-8 text; save the config as UTF-8 "
                        "(Korean and other text in a config must be UTF-8)") from None
    try:
        # safe_load builds plain values only: a `!!python/...` tag is an error, never code that runs.
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise UserError(_yaml_error_message(exc, path)) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        raise UserError(f"{path}: the config is empty; it needs at least `task: NAME` (see `tunelab tasks`)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (task, model, data, train, ...), "
                        f"not {_kind(data)}")
    return data


def _yaml_error_message(exc: yaml.MarkedYAMLError, path: Path) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "syntax error"
    tag = re.search(r"tag '([^']+)'", problem)
    if isinstance(exc, yaml.constructor.ConstructorError) and tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{path}: the YAML tag `{name}`{where} is not allowed: a config holds plain values "
                "(text, numbers, lists, mappings), and tunelab never runs code from a config")
    detail = problem
    if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
        detail += f", {exc.context} that starts at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
    if "'\\t'" in problem:
        detail += "; indent with spaces, not tabs"
    return f"{path}: not valid YAML{where} ({detail})"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text `{value[:40]}`"
    return f"`{value}`"


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
        if not key.strip() or "" in key.strip().split("."):
            raise UserError(f"--set expects key=value with a dotted key like train.epochs=2, got `{item}`")
        out[key.strip()] = parse_value(value.strip())
    return out


SECTIONS = tuple(name for name in RunConfig.model_fields if name != "task")


def build_config(raw: dict | None = None, overrides: dict[str, Any] | None = None, source: str = "config",
                 override_source: str = "command line") -> RunConfig:
    """Merge raw YAML data with dotted overrides, fill the preset, validate.

    Errors name where the bad value came from: `source` (the YAML file) or `override_source` (the
    `--set`/option values in `overrides`).
    """
    given = [dotted for dotted, value in (overrides or {}).items() if value is not None]

    def origin(key: str) -> str:
        if any(key == o or key.startswith(o + ".") for o in given):
            return override_source
        if any(o.startswith(key + ".") for o in given):  # a section set partly on the command line
            return f"{source} + {override_source}" if _has_key(raw or {}, key) else override_source
        return source

    tree = _deepcopy(raw or {})
    tree.pop("sweep", None)  # the search space of `tunelab sweep` (tunelab/sweeps.py), not a run setting
    _check_sections(tree, lambda key: source)
    for dotted in given:
        set_dotted(tree, dotted, overrides[dotted])
    _check_sections(tree, origin)
    if tree.get("task") is None:
        raise UserError(f"{source}: missing `task` (e.g. `task: sft`; see `tunelab tasks`)")
    task = tree["task"]
    if isinstance(task, dict) and not isinstance(task.get("name"), str):
        raise UserError(f"{origin('task')}: `task` needs a `name` (e.g. `task:` then `  name: sft`; see `tunelab tasks`)")
    task_name = task if isinstance(task, str) else task.name if isinstance(task, BaseModel) else task["name"]
    try:
        load_task_class(task_name)
    except UserError as exc:
        raise UserError(f"{origin('task.name')}: {exc}") from None
    train = tree.get("train") or {}
    preset = train.get("preset") or "balanced"
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UserError(f"{origin('train.preset')}: unknown preset `{preset}`{did_you_mean(str(preset), PRESETS)}; "
                        f"choose from {', '.join(PRESETS)}")
    tree["train"] = apply_preset(train, preset)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source, origin, task_name)) from None


def _has_key(tree: dict, dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_sections(tree: dict, origin) -> None:
    """Each section is a mapping (an empty one means defaults); `task` is a name or a mapping."""
    for name in SECTIONS:
        if name in tree and tree[name] is None:
            del tree[name]  # `lora:` with every key commented out
        elif name in tree and not isinstance(tree[name], dict):
            raise UserError(f"{origin(name)}: `{name}` must be a mapping of settings (`{name}:` then indented "
                            f"`key: value` lines), not {_kind(tree[name])}")
    task = tree.get("task")
    if task is not None and not isinstance(task, (str, dict, BaseModel)):
        raise UserError(f"{origin('task')}: `task` must be a task name (e.g. `task: sft`) or a mapping with a `name`, "
                        f"not {_kind(task)}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    raw = read_yaml(path) if path else {}
    return build_config(raw, overrides, source=str(path) if path else "command line")


def save_config(config: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def format_validation_error(exc: ValidationError, source: str, origin=None, task_name: str | None = None) -> str:
    """One line per problem: `SOURCE: `key`: message`, SOURCE being where the key's value came from."""
    origin = origin or (lambda key: source)
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # Validator wrappers may add a model class name (`SFTConfig`) to the location; drop it.
        loc = [p for p in loc if not (p[:1].isupper() and p.isidentifier() and p.endswith("Config"))]
        key = ".".join(loc)
        where = origin(key) if key else source
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1], task_name)
            lines.append(f"{where}: unknown key `{key}`{did_you_mean(loc[-1], known)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            value = err.get("input")
            if err["type"] != "missing" and isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 40:
                msg += f" (got {value!r})"
            lines.append(f"{where}: `{key}`: {msg}" if key else f"{where}: {msg}")
    return "; ".join(lines)


def _known_keys(section_path: list[str], task_name: str | None = None) -> list[str]:
    model: type[BaseModel] = RunConfig
    for depth, part in enumerate(section_path):
        if depth == 0 and part == "task":
            if not task_name:
                return []
            try:  # task keys are the plug-in's own config class
                model = load_task_class(task_name).config_class
            except UserError:
                return []
            continue
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
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
