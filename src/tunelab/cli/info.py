"""`tunelab models` and `tunelab tasks`: what is available on this machine."""
from __future__ import annotations

from rich.table import Table

from tunelab.cli.app import app, console


@app.command()
def models():
    """Packaged models (install offline from pip) and whether they are installed/cached."""
    from tunelab.models import list_models

    table = Table(title="packaged models")
    for col in ("alias", "kind", "installed", "cached", "pip", "description"):
        table.add_column(col)
    for m in list_models():
        table.add_row(m["alias"], m["kind"], "yes" if m["installed"] else "no", "yes" if m["cached"] else "no",
                      m["pip"], m["description"])
    console.print(table)
    console.print("Any local model folder or (online) Hub id works too.")


@app.command()
def tasks():
    """Available task plug-ins."""
    from tunelab.tasks import available_tasks

    table = Table(title="tasks")
    for col in ("name", "head", "fields", "description"):
        table.add_column(col)
    for name, cls in available_tasks().items():
        fields = " | ".join("+".join(g) for g in cls.fields.any_of)
        table.add_row(name, cls.head, fields, cls.description)
    console.print(table)


@app.command()
def env():
    """Versions, CPU features and the detected device/dtype: paste this into a bug report."""
    from tunelab.models.hardware import environment_lines

    for line in environment_lines():
        console.print(line, soft_wrap=True)
