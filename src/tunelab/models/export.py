"""Exports for other tools: a merged transformers folder (LoRA folded into the weights) and a GGUF file.

The merged folder is plain `save_pretrained` output that `AutoModelFor...from_pretrained(folder)` loads without
tunelab or peft. The GGUF file (llama-architecture decoders) is written with the `gguf` package the way
llama.cpp's converter writes one: llama.cpp's tensor names, the q/k projections permuted to its rotary layout,
the BPE tokenizer and the chat template in the metadata.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.errors import UserError
from tunelab.io import atomic_path, atomic_write_text

MERGED_MARKER = ".tunelab-merged"
HEAD_CLASSES = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification"}


def check_export_folder(target: Path, run_dir: Path, overwrite: bool, option: str = "--merged") -> None:
    """Refuse (UserError) a target that would replace or mix with anything but an earlier merged export."""
    if str(target).strip() in ("", ".", "..") or target.resolve() == Path.cwd().resolve() \
            or target.resolve() in Path.cwd().resolve().parents:
        raise UserError(f"{option} {target} is the current directory (or contains it); name a new folder")
    run = run_dir.resolve()
    if target.resolve() == run or run in target.resolve().parents or target.resolve() in run.parents:
        raise UserError(f"{option} {target} overlaps the run {run_dir}; choose a folder outside it")
    if not target.exists():
        return
    if not target.is_dir():
        raise UserError(f"{option} {target} is a file; name a new folder")
    if not any(target.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace an earlier export there, or choose another {option}")
    if not (target / MERGED_MARKER).exists():
        raise UserError(f"{target} is not a tunelab merged export (no {MERGED_MARKER}); --overwrite replaces only an "
                        f"earlier export, never another folder: choose a new {option}")


def save_merged(model, tokenizer, target: Path, readme: str, record: dict) -> Path:
    """Write `model` (adapters already merged) in fp32 with its tokenizer, a README and the export marker, atomically."""
    if hasattr(model, "peft_config"):
        raise UserError("this run's adapter could not be merged (a 4/8-bit quantized base keeps it separate); "
                        "train without model.load_in_4bit/load_in_8bit to export merged weights")
    with atomic_path(target, is_dir=True) as tmp:
        model.to(torch.float32).save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        atomic_write_text(tmp / "README.md", readme)
        atomic_write_text(tmp / MERGED_MARKER, json.dumps(record, indent=2) + "\n")
    return target


GGUF_TYPES = ("f16", "bf16", "f32")


def _permute_for_llama_cpp(weight, n_head: int):
    """HF's q/k rows (rotary halves) in llama.cpp's interleaved order (convert_hf_to_gguf.py's `permute`;
    transformers' GGUF loader undoes it)."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tokenizer_vocabulary(tokenizer, rows: int):
    """(tokens, token types, merges) of a byte-level BPE tokenizer, padded to the embedding's `rows`."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export handles byte-level BPE tokenizers (like SmolLM2's); this one is {model.get('type')}")
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {t["id"]: t for t in backend.get("added_tokens", [])}
    for token in special.values():
        by_id[token["id"]] = token["content"]
    tokens, types = [], []
    for i in range(rows):
        if i in by_id:
            tokens.append(by_id[i])
            kind = special.get(i)
            types.append(gguf.TokenType.NORMAL if kind is None else
                         gguf.TokenType.CONTROL if kind.get("special") else gguf.TokenType.USER_DEFINED)
        else:  # embedding rows beyond the vocabulary (padded for speed)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def write_gguf(model, tokenizer, target: Path, tensor_type: str = "f16", name: str = "tunelab export") -> Path:
    """Write a llama-architecture causal LM (adapters merged) as one GGUF file, atomically: weights in
    `tensor_type` (norms in f32, as llama.cpp keeps them), BPE tokenizer, special ids and chat template."""
    import gguf
    import numpy as np

    config = model.config
    if getattr(config, "model_type", None) != "llama" or not hasattr(model, "lm_head"):
        raise UserError(f"GGUF export is for llama-architecture causal LMs (SmolLM2 and runs on it); this model is "
                        f"`{getattr(config, 'model_type', type(model).__name__)}` with a {type(model).__name__} head")
    if tensor_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got `{tensor_type}`")
    rope = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default" or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise UserError("GGUF export: this model scales its rotary embeddings (rope_type "
                        f"`{rope.get('rope_type') or scaling.get('rope_type')}`), which tunelab's writer does not carry")
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        state.pop("lm_head.weight", None)  # llama.cpp (and transformers' reader) tie a file without output.weight
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "f32": gguf.GGMLQuantizationType.F32}[tensor_type]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "f32": gguf.LlamaFileType.ALL_F32}[tensor_type]
    rows = state["model.embed_tokens.weight"].shape[0]
    tokens, types, merges = _tokenizer_vocabulary(tokenizer, rows)
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(theta))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(rows)
        writer.add_file_type(file_type)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("smollm" if tokens[:1] == ["<|endoftext|>"] else "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                                 (writer.add_eos_token_id, tokenizer.eos_token_id),
                                 (writer.add_unk_token_id, tokenizer.unk_token_id),
                                 (writer.add_pad_token_id, tokenizer.pad_token_id)):
            if token_id is not None:
                setter(int(token_id))
        writer.add_add_bos_token(False)
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
        for hf_name, weight in state.items():
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                if "rotary_emb" in hf_name:
                    continue  # recomputed from rope_freq_base
                raise UserError(f"GGUF export: no llama.cpp name for tensor `{hf_name}`")
            if hf_name.endswith("q_proj.weight"):
                weight = _permute_for_llama_cpp(weight, n_head)
            elif hf_name.endswith("k_proj.weight"):
                weight = _permute_for_llama_cpp(weight, n_kv)
            if weight.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name, np.ascontiguousarray(weight, dtype=np.float32))
            elif qtype == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name, np.ascontiguousarray(weight, dtype=np.float16))
            else:
                writer.add_tensor(gguf_name, gguf.quants.quantize(np.ascontiguousarray(weight), qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target
