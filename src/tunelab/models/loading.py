"""Loading tokenizers and models for a head, on the detected hardware."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Any

import torch

from tunelab.config.schema import ModelConfig
from tunelab.errors import UserError
from tunelab.io import atomic_path
from tunelab.models.hardware import Hardware, cpu_has_fast_bf16
from tunelab.models.pooling import apply_pooling, resolve_pooling
from tunelab.models.registry import NAMED_CHAT_TEMPLATES, ResolvedModel, cache_dir, resolve_model

log = logging.getLogger(__name__)


def _from_pretrained_kwargs(resolved: ResolvedModel) -> dict[str, Any]:
    return {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}


def load_tokenizer(config: ModelConfig, resolved: ResolvedModel | None = None):
    from transformers import AutoTokenizer

    resolved = resolved or resolve_model(config.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=config.trust_remote_code,
                                                  **_from_pretrained_kwargs(resolved))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from `{config.name_or_path}`: {str(exc).splitlines()[0]}") from None
    template = config.chat_template or resolved.chat_template
    if template:
        tokenizer.chat_template = NAMED_CHAT_TEMPLATES.get(template, template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def ensure_cached(resolved: ResolvedModel, tokenizer) -> ResolvedModel:
    """Dequantize a packaged GGUF once into a safetensors cache folder (atomic), then load from there."""
    if not (resolved.alias and resolved.gguf_file):
        return resolved
    from transformers import GgufConfig

    target = cache_dir() / "models" / resolved.alias
    log.info("first use of %s: converting GGUF weights into %s (one time)", resolved.alias, target)
    model = model_class("causal_lm").from_pretrained(resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32,
                                      quantization_config=GgufConfig(dequantize=True))
    with atomic_path(target, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return ResolvedModel(str(target), alias=resolved.alias, chat_template=resolved.chat_template)


def classification_pooling(config: ModelConfig) -> str:
    """The pooling a classification run uses (`auto` resolved against the model folder), saved with the run."""
    return resolve_pooling(config.pooling, resolve_model(config.name_or_path).path)


def model_class(head: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification}[head]


def predict_dtype(config: ModelConfig, hardware: Hardware, generative: bool = False) -> torch.dtype:
    """The dtype a trained run predicts in. `auto`: the hardware's dtype on GPUs; on CPU float32, which
    reproduces the fp32 evaluation that training reports (bf16 merged weights moved class probabilities by up
    to 6% relative), except for text generation on a CPU with fast bf16 that trains in bf16: there bf16
    weights decode ~2x faster and greedy outputs stay (nearly) the same (bench/bench_generate.py counts them).
    Resolved once at training time and saved in the run's config.yaml; `tunelab.load` on a CPU without fast bf16
    predicts a saved bfloat16 run in float32 (and says so) unless bf16 is asked for again."""
    if config.predict_dtype != "auto":
        return getattr(torch, config.predict_dtype)
    if hardware.device != "cpu":
        return hardware.dtype
    fast_bf16 = generative and hardware.dtype == torch.bfloat16 and cpu_has_fast_bf16()
    return torch.bfloat16 if fast_bf16 else torch.float32


def load_model(config: ModelConfig, head: str, hardware: Hardware, head_kwargs: dict | None = None,
               tokenizer=None, for_training: bool = True, frozen_base: bool = False, dtype: torch.dtype | None = None,
               head_restored_later: bool = False):
    """Load `config`'s weights with the task's head, on the hardware's device, in `dtype` if given.

    Otherwise: training keeps fp32 master weights (the Trainer autocasts), except a frozen LoRA base of a
    causal LM in bf16: it is never updated, so it is stored in bf16 (half the memory, no per-op casts)
    while PEFT keeps the adapter weights in fp32. Inference uses the hardware's dtype.
    `head_restored_later`: the caller loads the trained head next (a LoRA run's adapter), so transformers'
    "newly initialized / MISSING" report about the fresh head is noise and stays quiet.
    """
    resolved = resolve_model(config.name_or_path)
    cls = model_class(head)
    if resolved.gguf_file and resolved.alias:
        resolved = ensure_cached(resolved, tokenizer or load_tokenizer(config, resolved))
    kwargs: dict[str, Any] = dict(head_kwargs or {})
    kwargs.update(_from_pretrained_kwargs(resolved))
    if resolved.gguf_file:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    kwargs["trust_remote_code"] = config.trust_remote_code
    if config.attn_implementation is None and hardware.is_cuda and hardware.dtype != torch.float32 \
            and importlib.util.find_spec("flash_attn") is not None:
        kwargs["attn_implementation"] = "flash_attention_2"
    if config.attn_implementation:
        if config.attn_implementation.startswith("flash_attention") and not hardware.is_cuda:
            raise UserError(f"model.attn_implementation={config.attn_implementation} needs a CUDA GPU; use `sdpa` here")
        kwargs["attn_implementation"] = config.attn_implementation
    if config.load_in_4bit or config.load_in_8bit:
        kwargs["quantization_config"] = _bnb_config(config, hardware)
        kwargs["device_map"] = {"": 0}
    low_precision_base = frozen_base and head == "causal_lm" and hardware.dtype == torch.bfloat16
    kwargs["dtype"] = dtype or (hardware.dtype if (not for_training or low_precision_base) else torch.float32)
    check_head(config, head, resolved)
    try:
        with _quiet_transformers() if head_restored_later else contextlib.nullcontext():
            model = cls.from_pretrained(resolved.path, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model `{config.name_or_path}` for {head}: {str(exc).splitlines()[0]}") from None
    if head == "sequence_classification":
        apply_pooling(model, resolve_pooling(config.pooling, resolved.path))
    if "device_map" not in kwargs:
        model.to(hardware.device)
    if hardware.device == "cpu" and not config.attn_implementation:
        _use_tunelab_sdpa(model)
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _use_tunelab_sdpa(model) -> None:
    """On CPU, a model that would run transformers' SDPA attention runs `tunelab_sdpa`: the same, except for short
    bf16 sequences, where a grouped bf16 attention is faster (`tunelab.models.attention`). Models whose code cannot
    switch attention implementation keep their own."""
    from tunelab.models.attention import register

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    try:
        model.set_attn_implementation(register())
    except (ValueError, ImportError, AttributeError, KeyError) as exc:
        log.debug("keeping sdpa attention: %s", exc)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def check_head(config: ModelConfig, head: str, resolved: ResolvedModel | None = None) -> None:
    """Fail early, with a clear message, when the model cannot take the task's head (an encoder for generation)."""
    from transformers import AutoConfig, MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    resolved = resolved or resolve_model(config.name_or_path)
    name = config.name_or_path
    try:
        model_config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=config.trust_remote_code,
                                                  **_from_pretrained_kwargs(resolved))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read model config from `{name}`: {str(exc).splitlines()[0]}") from None

    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if head == "causal_lm" else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    supported = type(model_config) in mapping
    if head == "causal_lm" and model_config.architectures:
        # BERT-style encoders register an LM head class too, but were never trained to generate.
        supported = supported and any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
                                      for a in model_config.architectures)
    if not supported:
        what = "a decoder (causal LM) model" if head == "causal_lm" else "a model with a sequence-classification head"
        raise UserError(f"model `{name}` ({model_config.model_type}) cannot serve as {what} for this task; "
                        f"e.g. an encoder like all-minilm-l6-v2 cannot generate text")


def _bnb_config(config: ModelConfig, hardware: Hardware):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("4-bit/8-bit loading needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    if config.load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=hardware.dtype)
    return BitsAndBytesConfig(load_in_8bit=True)
