"""A chat session: keeps the conversation, renders it with the chat template, streams replies."""
from __future__ import annotations

from typing import Iterator

from tunelab.config.schema import GenerationConfig
from tunelab.inference.engine import GenerationEngine


class ChatSession:
    def __init__(self, model, tokenizer, config: GenerationConfig | None = None, system: str | None = None):
        self.engine = GenerationEngine(model, tokenizer, config)
        self.tokenizer = tokenizer
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        # No template (a base model): a plain transcript the model can continue.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in self.messages]
        return "\n".join(lines) + "\nAssistant:"

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message, stream the reply, and keep it in the history."""
        self.messages.append({"role": "user", "content": text})
        pieces = []
        for piece in self.engine.stream(self.prompt()):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})

    def ask(self, text: str) -> str:
        return "".join(self.send(text)).strip()
