"""Filesystem helpers: atomic writes so that no output is ever half-written."""
from tunelab.io.atomic import atomic_path, atomic_write_text, atomic_write_json, append_jsonl

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "append_jsonl"]
