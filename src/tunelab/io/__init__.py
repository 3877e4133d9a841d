"""Filesystem helpers: atomic writes so that no output is ever half-written."""
from tunelab.io.atomic import append_jsonl, atomic_path, atomic_write_json, atomic_write_text, check_output_file, disk_full

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "append_jsonl", "check_output_file", "disk_full"]
