"""Text generation: batched with a KV cache, and streamed for chat.

Prompts are sorted by length and generated in batches with left padding, so
each batch does little wasted work; outputs come back in the caller's order.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from tunelab.config.schema import GenerationConfig


class RepetitionPenaltySparingStops:
    """transformers' repetition penalty (a logits processor), except on the tokens that end a reply: a chat prompt
    holds its template's end-of-turn token (Gemma's `<end_of_turn>` closes every earlier turn), so the plain penalty
    pushed down the very token the reply should stop with, and trained replies ran on past their end."""

    def __init__(self, penalty: float, spared_ids: list[int]):
        from transformers import RepetitionPenaltyLogitsProcessor

        self.penalty = RepetitionPenaltyLogitsProcessor(penalty=penalty)
        self.spared = torch.tensor(sorted(set(spared_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        spared = self.spared.to(scores.device)
        kept = scores[:, spared].clone()
        scores = self.penalty(input_ids, scores)
        scores[:, spared] = kept
        return scores


@dataclass
class GenerationStats:
    prompts: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class GenerationEngine:
    def __init__(self, model, tokenizer, config: GenerationConfig | None = None, pack_weights: bool = True):
        """`pack_weights` (CPU): give the model's linear layers pre-packed weight copies for decode steps
        (`tunelab.models.packed_linear`; ~10-40% faster steps, one more copy of the weights in memory, made only
        while it fits in half the memory still available)."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        self.stats = GenerationStats()
        self.model.eval()
        self.cpu_threads: int | None = None
        self.packed_layers = 0
        # Prefill prompts without their padding, then decode them as one batch (see prefill_by_length).
        self.bucketed_prefill = True
        if self.device.type == "cpu":
            # Batched decoding multiplies small matrices; on busy/SMT vCPUs 2 threads made them 20x slower.
            # Set process-wide on purpose: generation runs from several methods and a streaming worker thread.
            from tunelab.models.threads import choose_cpu_threads

            self.cpu_threads, _ = choose_cpu_threads()
            torch.set_num_threads(self.cpu_threads)
            if pack_weights:
                from tunelab.models.hardware import available_memory_bytes
                from tunelab.models.packed_linear import pack_linears

                free = available_memory_bytes()
                self.packed_layers = pack_linears(model, max_bytes=free // 2 if free else None)

    def _generate_kwargs(self, **overrides) -> dict:
        c = self.config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        # repetition_penalty 1.0 overrides a penalty in the model's own generation_config: ours spares stop tokens.
        kwargs = dict(max_new_tokens=c.max_new_tokens, do_sample=c.do_sample, pad_token_id=self.tokenizer.pad_token_id,
                      eos_token_id=self._stop_ids(), repetition_penalty=1.0)
        if c.repetition_penalty != 1.0:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltySparingStops(c.repetition_penalty, kwargs["eos_token_id"])])
        if c.do_sample:
            kwargs.update(temperature=c.temperature, top_p=c.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        # Chat templates end turns with their own token (Gemma: <end_of_turn>); stop there too.
        for token in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a reply: EOS and the chat template's end-of-turn token."""
        return self._stop_ids()

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def generate(self, prompts: list[str], **overrides) -> list[str]:
        """Generate a completion for each prompt text (already templated); returns texts in input order."""
        if not prompts:
            return []
        tok = self.tokenizer
        kwargs = self._generate_kwargs(**overrides)
        batch_size = overrides.get("batch_size") or self.config.batch_size
        lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        outputs: list[str] = [""] * len(prompts)
        old_side = tok.padding_side
        tok.padding_side = "left"
        start = time.perf_counter()
        try:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
                out = self._generate_prefilled(enc, **kwargs)
                new = out[:, enc["input_ids"].shape[1]:]
                for row, i in enumerate(idx):
                    ids = new[row]
                    self.stats.new_tokens += _count_until_stop(ids, kwargs["eos_token_id"] + [tok.pad_token_id])
                    outputs[i] = decode_complete(tok, ids)  # no half character at a max_new_tokens cut
        finally:
            tok.padding_side = old_side
        self.stats.prompts += len(prompts)
        self.stats.seconds += time.perf_counter() - start
        return outputs

    def _generate_prefilled(self, enc, **kwargs) -> torch.Tensor:
        """`model.generate` on a left-padded batch (`enc`: input_ids, attention_mask, ...), its prompts prefilled by
        length into a static cache first (`prefill_by_length`; the plain one-batch prefill where that does not apply
        or `bucketed_prefill` is off)."""
        cache = (prefill_by_length(self.model, enc["input_ids"], enc["attention_mask"], kwargs["max_new_tokens"])
                 if self.bucketed_prefill else None)
        if cache is not None:
            kwargs["past_key_values"] = cache
        return self.model.generate(**enc, **kwargs)

    @torch.inference_mode()
    def generate_batch_ids(self, prompt_ids: list[list[int]], max_new_tokens: int, logits_processor=None,
                           stopping_criteria=None) -> torch.Tensor:
        """One left-padded batch of tokenized prompts through `model.generate` (prefilled by length into a static
        cache, as `generate` does), greedy unless `logits_processor` picks tokens itself: the hook of the server's
        request batching (tunelab.inference.batching), whose processor samples each row with its own settings and
        whose stopping criteria stream and stop each row. Returns the new token ids (rows padded after they stopped)."""
        kwargs = self._generate_kwargs(max_new_tokens=max_new_tokens, do_sample=False)
        pad = kwargs["pad_token_id"] if kwargs["pad_token_id"] is not None else kwargs["eos_token_id"][0]
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompt_ids], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids],
                                      device=self.device)
        start = time.perf_counter()
        from transformers import LogitsProcessorList

        processors = kwargs.pop("logits_processor", []) + list(logits_processor or [])  # the penalty before sampling
        out = self._generate_prefilled({"input_ids": input_ids, "attention_mask": attention_mask},
                                       stopping_criteria=stopping_criteria,
                                       logits_processor=LogitsProcessorList(processors) if processors else None, **kwargs)
        new = out[:, width:]
        self.stats.prompts += len(prompt_ids)
        self.stats.new_tokens += sum(_count_until_stop(row, kwargs["eos_token_id"] + [pad]) for row in new)
        self.stats.seconds += time.perf_counter() - start
        return new

    def stream(self, prompt: str, **overrides) -> Iterator[str]:
        """Yield text pieces as they are generated (for interactive chat).

        Decoded incrementally and UTF-8-safe (`Utf8Streamer`): a character whose bytes span several tokens
        (a Hangul syllable is 3 bytes, often 2-3 byte-level tokens) is held back until it is complete, so no
        piece ever ends in half a character; `\ufffd` appears only for bytes that are really invalid."""
        enc = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.device)
        kwargs = self._generate_kwargs(**overrides)
        streamer = Utf8Streamer(self.tokenizer, skip_prompt=True)
        errors: list[BaseException] = []

        def run():
            try:
                with torch.inference_mode():
                    self.model.generate(**enc, **kwargs, streamer=streamer)
            except BaseException as exc:  # surface errors from the worker thread
                errors.append(exc)
            finally:
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]


class IncrementalDecoder:
    """Token ids in, text pieces out, never half a character.

    Each step decodes only a short window (ids since the last emitted piece, plus the previous piece for
    context, so sentencepiece/byte-level spacing is right) instead of the whole reply. When the window's text
    ends in `\ufffd`, the last token(s) are an incomplete UTF-8 sequence: the piece waits for the next token.
    `finish()` flushes the rest; an incomplete character cut off by the length limit is dropped (it is not a
    character), while bytes that are invalid UTF-8 come through as `\ufffd`, as `decode` gives them."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # window start: the tokens of the last emitted piece (context only)
        self.read = 0    # tokens before this one have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_ids) -> str:
        """Add tokens; return the text that is now complete ("" while a character is still incomplete)."""
        self.ids.extend(int(i) for i in token_ids)
        before = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if text.endswith("\ufffd") or len(text) <= len(before):
            return ""
        piece = text[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        return piece

    def finish(self) -> str:
        """The text still held back. Trailing tokens that only start a character (cut off) are dropped."""
        if self.read >= len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:complete_end(self.tokenizer, self.ids, self.read)])
        self.prefix = self.read = len(self.ids)
        return text[len(before):]


def decode_complete(tokenizer, ids) -> str:
    """`decode(ids, skip_special_tokens=True).strip()`, without the first bytes of a character whose last bytes
    were never generated (a reply cut at max_new_tokens in the middle of a Hangul syllable ended in `\ufffd`)."""
    ids = [int(i) for i in ids]
    special, end = set(tokenizer.all_special_ids), len(ids)
    while end and ids[end - 1] in special:
        end -= 1
    return tokenizer.decode(ids[:complete_end(tokenizer, ids[:end])], skip_special_tokens=True).strip()


def complete_end(tokenizer, ids: list[int], start: int = 0) -> int:
    """How many of `ids` to decode so that `ids[start:end]` does not end in the first bytes of a character whose
    last bytes never came (a reply cut by a token limit inside a Hangul syllable)."""
    end = len(ids)
    while end > start and incomplete_utf8_tail(tokenizer, ids[start:end]):
        end -= 1
    return end


def _token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The raw bytes of a byte-level token (GPT-2 style `Ġ`-alphabet or sentencepiece `<0xEA>`), else None."""
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(token, str):
        return None
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return bytes([int(token[3:5], 16)])
        except ValueError:
            return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if token and backend is not None and "ByteLevel" in str(backend.decoder) and all(c in _BYTE_OF for c in token):
        return bytes(_BYTE_OF[c] for c in token)
    return None


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _byte_level_alphabet()


def incomplete_utf8_tail(tokenizer, ids: list[int]) -> bool:
    """Whether `ids` end in the first bytes of a UTF-8 character that never got its last byte(s)."""
    tail = b""
    for token_id in reversed(ids):
        piece = _token_bytes(tokenizer, token_id)
        if piece is None:
            break
        tail = piece + tail
        if len(tail) >= 4:
            break
    if not tail:
        return False
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    for start in range(len(tail)):  # the last character boundary in the tail
        try:
            decoder.reset()
            decoder.decode(tail[start:], final=False)
            pending = decoder.getstate()[0]
        except UnicodeDecodeError:
            continue
        return bool(pending)
    return False


class Utf8Streamer:
    """A transformers streamer (put/end) that yields `IncrementalDecoder` pieces to an iterating thread."""

    def __init__(self, tokenizer, skip_prompt: bool = True, timeout: float | None = None):
        import queue

        self.decoder = IncrementalDecoder(tokenizer)
        self.skip_prompt = skip_prompt
        self.timeout = timeout
        self.queue: queue.Queue = queue.Queue()
        self._prompt_pending = skip_prompt
        self._ended = False

    def put(self, value) -> None:
        if self._prompt_pending:  # generate() first puts the prompt
            self._prompt_pending = False
            return
        ids = value.reshape(-1).tolist() if hasattr(value, "reshape") else list(value)
        piece = self.decoder.push(ids)
        if piece:
            self.queue.put(piece)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        piece = self.decoder.finish()
        if piece:
            self.queue.put(piece)
        self.queue.put(None)

    def __iter__(self):
        while True:
            piece = self.queue.get(timeout=self.timeout)
            if piece is None:
                return
            yield piece


def _count_until_stop(ids: torch.Tensor, stop_ids: list[int]) -> int:
    for n, token in enumerate(ids.tolist(), 1):
        if token in stop_ids:
            return n
    return len(ids)


def _length_groups(lengths: list[int], slack: float = 1.15) -> list[list[int]]:
    """Row indices cut into groups of similar length, longest first, so that each group's padded area stays within
    `slack` x its real tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            if lengths[g[0]] * (len(g) + 1) <= slack * (sum(lengths[j] for j in g) + lengths[i]):
                g.append(i)
                continue
        groups.append([i])
    return groups


PREFILL_TOKENS = 4096
"""The most prompt tokens one packed prefill forward takes (its activations grow with them; rows are never split)."""


@torch.inference_mode()
def prefill_by_length(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int | None = None):
    """The KV cache of a left-padded batch's prompts (all but each row's last token), computed without the padding.

    One left-padded prefill computes every pad position as if it were a token: 16 instruction prompts of
    mixed length were 2,896 positions for 1,399 real tokens. Here only real tokens are computed, and their
    caches are left-padded into one batch cache; `generate` then decodes all rows together, continuing from it.
    - Models running `tunelab_sdpa` (CPU) prefill the prompts packed end to end in one row, each attending only
      to itself (`_prefill_packed`): one forward with large matrix products instead of one per length group
      (the 16 bench prompts in bf16: prefill 1.8-2.0 -> 1.0-1.5 s).
    - Others prefill groups of similar length (`_length_groups`, a little padding within each group).
    Pad slots hold zeros and stay masked, and positions come from the attention mask as `generate` computes them,
    so the result is the one-batch prefill's. With `max_new_tokens`, the cache is a static one sized for the whole
    generation: decoding then writes each step's keys in place instead of concatenating the whole cache anew (27%
    of a decode step's time on CPU). Returns None (the caller prefills the plain way) for caches that are not plain
    per-layer key/value tensors (sliding-window or hybrid models), or when grouping would not save work.
    """
    from transformers import DynamicCache, StaticCache
    from transformers.cache_utils import DynamicLayer, StaticLayer

    lengths = attention_mask.sum(1).tolist()
    if min(lengths) < 2 or attention_mask[:, -1].eq(0).any():  # needs left padding and >= 1 token to prefill
        return None
    probe = DynamicCache(config=model.config)
    if any(type(layer) is not DynamicLayer for layer in getattr(probe, "layers", [None])):
        return None
    layers = _prefill_packed(model, input_ids, lengths) if _packs_prompts(model) else None
    if layers is None:
        groups = _length_groups(lengths)
        if len(groups) == 1:
            return None
        layers = _prefill_groups(model, input_ids, attention_mask, lengths, groups)
    merged = DynamicCache(config=model.config)
    if max_new_tokens:
        static = StaticCache(config=model.config, max_cache_len=input_ids.shape[1] - 1 + max_new_tokens)
        if all(type(layer) is StaticLayer for layer in static.layers):
            merged = static
    for layer_idx, (keys, values) in enumerate(layers):
        merged.layers[layer_idx].update(keys, values)
    return merged


def _packs_prompts(model) -> bool:
    from tunelab.models.attention import NAME

    return getattr(model.config, "_attn_implementation", None) == NAME


def _prefill_packed(model, input_ids: torch.Tensor,
                    lengths: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per layer, the left-padded keys and values [rows, kv heads, width - 1, head dim] of each row's prompt but its
    last token, from forwards over the prompts packed end to end (`PREFILL_TOKENS` at most each; positions restart
    at 0 for every prompt and `cu_seq_lens_q` keeps each prompt's attention to itself). None when some layer did not
    attend prompt by prompt (a model that does not pass the keywords on to its attention)."""
    from transformers import DynamicCache

    from tunelab.models.attention import counting_segment_calls

    rows, width = input_ids.shape
    chunks: list[list[int]] = [[]]
    tokens = 0  # in the last chunk
    for r in range(rows):
        if chunks[-1] and tokens + lengths[r] - 1 > PREFILL_TOKENS:
            chunks.append([])
            tokens = 0
        chunks[-1].append(r)
        tokens += lengths[r] - 1
    padded: list[tuple[torch.Tensor, torch.Tensor]] = []
    for chunk in chunks:
        sizes = [lengths[r] - 1 for r in chunk]
        ids = torch.cat([input_ids[r, width - lengths[r] : -1] for r in chunk])[None]
        position_ids = torch.cat([torch.arange(n, device=ids.device) for n in sizes])[None]
        bounds = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=ids.device)
        cache = DynamicCache(config=model.config)
        with counting_segment_calls() as segment_calls:
            model(input_ids=ids, position_ids=position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                  cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=max(sizes), max_length_k=max(sizes))
            if segment_calls() != len(cache.layers):
                return None
        # Token t of the packed row goes to (its row, its slot in the left-padded layout).
        row_of = torch.cat([torch.full((n,), r, dtype=torch.long, device=ids.device) for r, n in zip(chunk, sizes)])
        slot_of = torch.cat([torch.arange(width - 1 - n, width - 1, device=ids.device) for n in sizes])
        for layer_idx, layer in enumerate(cache.layers):
            if len(padded) <= layer_idx:
                k, v = layer.keys, layer.values
                padded.append((k.new_zeros(rows, k.shape[1], width - 1, k.shape[3]),
                               v.new_zeros(rows, v.shape[1], width - 1, v.shape[3])))
            keys, values = padded[layer_idx]
            keys[row_of, :, slot_of] = layer.keys[0].transpose(0, 1)
            values[row_of, :, slot_of] = layer.values[0].transpose(0, 1)
    return padded


def _prefill_groups(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: list[int],
                    groups: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the left-padded keys and values of each row's prompt but its last token, from one left-padded
    forward per group of rows of similar length."""
    from transformers import DynamicCache

    width = input_ids.shape[1]
    parts = []
    for rows in groups:
        w = max(lengths[i] for i in rows)
        ids = input_ids[rows, width - w : -1]
        mask = attention_mask[rows, width - w : -1]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        parts.append((rows, cache))
    order = [i for rows, _ in parts for i in rows]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    layers = []
    for layer_idx in range(len(parts[0][1].layers)):
        keys, values = [], []
        for rows, cache in parts:
            k, v = cache.layers[layer_idx].keys, cache.layers[layer_idx].values
            pad = (width - 1) - k.shape[-2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        layers.append((torch.cat(keys)[inverse], torch.cat(values)[inverse]))
    return layers
