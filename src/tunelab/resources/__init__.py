"""Small permissively licensed datasets shipped with tunelab (see README.md here)."""
from importlib.resources import files
from pathlib import Path


def resource_path(name: str) -> Path:
    return Path(str(files("tunelab.resources").joinpath(name)))
