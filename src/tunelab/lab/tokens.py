"""Special tokens of a model, how a chat tokenizes, tokens per character by script, and adding new tokens.

`inspect_tokens` answers "what does this tokenizer do with my text": bos/eos/pad/unk, the control tokens
its chat template writes, the added tokens, a sample chat token by token, and (with data) how many tokens
each character of each script costs (Hangul vs Latin). `add_tokens` adds domain tokens, grows the
embedding matrix by exactly that many rows initialised to the mean of the existing rows, and saves a
model+tokenizer folder that `tunelab train` accepts as `model.name_or_path`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.tokenizer_fit import ScriptCost, fit_warning, script_costs, script_of  # noqa: F401 (re-exported)
from tunelab.errors import UserError
from tunelab.models.peft_setup import ADDED_TOKENS_FILE

SAMPLE_CHAT = [
    {"role": "system", "content": "You answer legal questions briefly."},
    {"role": "user", "content": "What is a contract?"},
    {"role": "assistant", "content": "An agreement the law enforces."},
]
SAMPLE_PAIR = ("What is a contract?", "An agreement the law enforces.")
"""What an encoder (no chat template) is shown encoding: a text pair, as classification/preference feed it."""

"""Written by `add_tokens` into its output folder: which tokens were added, their ids and the base model."""
MAX_DATA_ROWS = 5000
"""Rows of `--data` read for tokens-per-character: enough for stable ratios, fast on a laptop."""


@dataclass
class TokenPiece:
    position: int
    id: int
    token: str   # the vocabulary entry (byte-level pieces look like `Ġword`)
    text: str    # what the token contributes to the decoded text
    special: bool


@dataclass
class TokenReport:
    model: str
    tokenizer_class: str
    vocabulary: int
    special: list[tuple[str, str | None, int | None]]  # (role, token, id) for bos/eos/pad/unk/cls/sep/mask
    template_tokens: list[tuple[str, int]]  # control tokens the chat template writes
    added: list[tuple[str, int, bool]]  # (token, id, special)
    sample_kind: str  # "chat template" | "text pair (no chat template)"
    sample_text: str
    sample: list[TokenPiece]
    scripts: list[ScriptCost] = field(default_factory=list)
    data_source: str | None = None
    fit_warning: str | None = None  # more than ~2 tokens per letter of the data's main script, and a better model


def inspect_tokens(model: str, data: str | Path | None = None, columns: list[str] | None = None,
                   encoding: str = "auto") -> TokenReport:
    """Everything about `model`'s tokenizer a fine-tuner should know (tokenizer only: no weights are loaded)."""
    tokenizer = _tokenizer(model)
    special = [(role, getattr(tokenizer, f"{role}_token", None), getattr(tokenizer, f"{role}_token_id", None))
               for role in ("bos", "eos", "pad", "unk", "cls", "sep", "mask")]
    special = [s for s in special if s[1] is not None or s[0] in ("bos", "eos", "pad", "unk")]
    added = sorted(((str(t.content), int(i), bool(t.special)) for i, t in tokenizer.added_tokens_decoder.items()),
                   key=lambda a: a[1])
    if tokenizer.chat_template:
        kind = "chat template"
        text = tokenizer.apply_chat_template(SAMPLE_CHAT, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        kind = "text pair (no chat template)"
        ids = tokenizer(*SAMPLE_PAIR)["input_ids"]
        text = tokenizer.decode(ids)
    report = TokenReport(model=model, tokenizer_class=type(tokenizer).__name__, vocabulary=len(tokenizer),
                         special=special, template_tokens=template_control_tokens(tokenizer), added=added,
                         sample_kind=kind, sample_text=text, sample=token_pieces(tokenizer, ids))
    if data is not None:
        texts = data_texts(data, columns, encoding)
        report.scripts = script_costs(tokenizer, texts)
        report.data_source = str(data)
        report.fit_warning = fit_warning(tokenizer, texts, model)
    return report


def _tokenizer(model: str):
    from tunelab.config.schema import ModelConfig
    from tunelab.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=model))


def template_control_tokens(tokenizer) -> list[tuple[str, int]]:
    """Added/special tokens that the chat template writes, in id order (e.g. <|im_start|>, <|im_end|>)."""
    template = tokenizer.chat_template
    if not template or not isinstance(template, str):
        return []
    found = {str(t.content): int(i) for i, t in tokenizer.added_tokens_decoder.items() if str(t.content) in template}
    for name in ("bos_token", "eos_token"):  # templates often write `{{ bos_token }}` instead of the literal
        if name in template and getattr(tokenizer, name, None):
            found[getattr(tokenizer, name)] = getattr(tokenizer, f"{name}_id")
    return sorted(found.items(), key=lambda kv: kv[1])


def token_pieces(tokenizer, ids: list[int]) -> list[TokenPiece]:
    """One row per token: id, vocabulary entry, and the text it adds to the decoded string.

    The text is decoded incrementally (decode(ids[:i+1]) minus decode(ids[:i])), so a character split
    over several byte-level tokens shows on the token that completes it, and the pieces join to the
    exact decoded text."""
    special_ids = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    pieces, decoded = [], ""
    for i, (token_id, token) in enumerate(zip(ids, tokens)):
        upto = tokenizer.decode(ids[: i + 1], clean_up_tokenization_spaces=False)
        text = upto[len(decoded):] if upto.startswith(decoded) else tokenizer.decode([token_id])
        pieces.append(TokenPiece(i, int(token_id), str(token), text, int(token_id) in special_ids))
        decoded = upto
    return pieces


# -- tokens per character, by script (the measuring lives in tunelab.data.tokenizer_fit) -------------------
def data_texts(path: str | Path, columns: list[str] | None = None, encoding: str = "auto") -> list[str]:
    """The text cells of a data file (the named columns, else every text column), first MAX_DATA_ROWS rows."""
    from tunelab.data.readers import read_table

    frame = read_table(path, encoding).head(MAX_DATA_ROWS)
    if columns:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: no column `{missing[0]}` (columns: {', '.join(map(str, frame.columns))})")
    else:
        columns = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, str)).any()]
        if not columns:
            raise UserError(f"{path}: no text column to measure")
    return [v for c in columns for v in frame[c].tolist() if isinstance(v, str) and v.strip()]


# -- adding tokens ---------------------------------------------------------------------------------------
@dataclass
class AddedTokens:
    output: Path
    base: str
    tokens: dict[str, int]           # new token -> id
    embedding_rows_before: int
    embedding_rows_after: int
    tied_output_embeddings: bool
    encodings: dict[str, list[int]]  # how the saved tokenizer encodes each new token (one id each)
    sample_text: str
    sample: list[TokenPiece]


def parse_token_list(text: str) -> list[str]:
    """`"<|law|>,<|case|>"` -> the tokens, in order, each once; a UserError for an empty list."""
    tokens = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not tokens:
        raise UserError("--add names no token; give a comma-separated list, e.g. --add \"<|law|>,<|case|>\"")
    return tokens


def add_tokens(model: str, tokens: list[str], output: str | Path, overwrite: bool = False) -> AddedTokens:
    """Add `tokens` to `model`'s tokenizer, grow its embeddings by exactly len(tokens) rows set to the mean of
    the existing rows (the usual initialisation: a new token starts as "an average token", not noise that
    dominates the first steps), and save model + tokenizer to `output` (atomically)."""
    import torch

    from tunelab.io import atomic_path, atomic_write_text

    output = Path(output)
    _check_output_folder(output, overwrite)
    tokenizer = _tokenizer(model)
    vocabulary = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocabulary]
    if present:
        raise UserError(f"token `{present[0]}` is already in {model}'s vocabulary (id {vocabulary[present[0]]}); "
                        "choose a new name")
    net = _load_for_resize(model, tokenizer)
    embeddings = net.get_input_embeddings().weight
    rows_before, used_rows = embeddings.shape[0], min(embeddings.shape[0], len(tokenizer))

    from tokenizers import AddedToken

    # Not `special`: a domain token is ordinary text the model reads and writes, and decoding keeps it.
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in tokens])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    rows_after = max(rows_before, max(ids.values()) + 1)
    with torch.no_grad():
        mean_input = net.get_input_embeddings().weight[:used_rows].mean(dim=0)
        output_layer = net.get_output_embeddings()
        tied = output_layer is None or output_layer.weight.data_ptr() == embeddings.data_ptr()
        mean_output = None if tied else output_layer.weight[:used_rows].mean(dim=0)
        mean_bias = (output_layer.bias[:used_rows].mean() if not tied and getattr(output_layer, "bias", None) is not None
                     else None)
        # mean_resizing=False: transformers' default samples around the mean; we set the exact mean below.
        net.resize_token_embeddings(rows_after, mean_resizing=False)
        new_ids = list(ids.values())
        net.get_input_embeddings().weight[new_ids] = mean_input
        if mean_output is not None:
            net.get_output_embeddings().weight[new_ids] = mean_output
            if mean_bias is not None:
                net.get_output_embeddings().bias[new_ids] = mean_bias
    with atomic_path(output, is_dir=True) as tmp:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / ADDED_TOKENS_FILE, json.dumps(
            {"base": model, "tokens": ids, "initialisation": "mean of existing embedding rows",
             "embedding_rows_before": rows_before, "embedding_rows_after": rows_after}, indent=2) + "\n")
    # The proof reads the saved folder back, exactly as `tunelab train` will load it.
    saved = _tokenizer(str(output))
    encodings = {t: saved(t, add_special_tokens=False)["input_ids"] for t in tokens}
    wrong = {t: e for t, e in encodings.items() if e != [ids[t]]}
    if wrong:
        token, got = next(iter(wrong.items()))
        raise RuntimeError(f"saved tokenizer encodes `{token}` as {got}, not [{ids[token]}]")
    sample_text = f"The {' and '.join(tokens)} sections apply."
    sample_ids = saved(sample_text, add_special_tokens=False)["input_ids"]
    return AddedTokens(output=output, base=model, tokens=ids, embedding_rows_before=rows_before,
                       embedding_rows_after=rows_after, tied_output_embeddings=tied, encodings=encodings,
                       sample_text=sample_text, sample=token_pieces(saved, sample_ids))


def _check_output_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; name a new folder")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"{output} exists; pass --overwrite to replace it, or choose another --output")
        if not (output / ADDED_TOKENS_FILE).exists():
            raise UserError(f"{output} was not written by `tunelab lab tokens --add` (no {ADDED_TOKENS_FILE}); "
                            "--overwrite replaces only such a folder: choose another --output")


def _load_for_resize(model: str, tokenizer):
    """The model's weights in fp32 on the CPU: a decoder with its LM head, an encoder without a task head
    (a classification head added here would be random and saved as if trained)."""
    import torch

    from tunelab.config.schema import ModelConfig
    from tunelab.models import detect_hardware, load_model
    from tunelab.models.loading import check_head
    from tunelab.models.registry import resolve_model

    config = ModelConfig(name_or_path=model, device="cpu")
    try:
        check_head(config, "causal_lm")
    except UserError:
        from transformers import AutoModel

        return AutoModel.from_pretrained(resolve_model(model).path, dtype=torch.float32)
    return load_model(config, "causal_lm", detect_hardware(config), tokenizer=tokenizer, for_training=False,
                      dtype=torch.float32)
