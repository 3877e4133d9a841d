"""`tunelab ui`: the web UI over a runs folder (parse, start the server, print where it is)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import app, console, err_console, user_errors
from tunelab.cli.serve import _loopback


@app.command()
@user_errors
def ui(
    runs: Path = typer.Option(Path("runs"), "--runs", help="The runs folder to show (new runs go there too)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (only this machine by default)."),
    port: int = typer.Option(7860, min=0, max=65535, help="Port to listen on."),
    examples: Optional[Path] = typer.Option(None, help="Folder of example configs for New run (default: ./examples "
                                            "if it exists)."),
):
    """A web UI in the browser: runs and their curves, new runs, data views, chat. Offline; Ctrl-C stops the
    server, not the trainings it started."""
    from tunelab.serve.app import bind_socket, run_server
    from tunelab.ui.app import create_app

    if examples is None and Path("examples").is_dir():
        examples = Path("examples")
    sock = bind_socket(host, port)
    from tunelab.ui.app import LOOPBACK_NAMES

    application = create_app(runs, examples, allowed_hosts=LOOPBACK_NAMES | {host} if _loopback(host) else None)
    if not _loopback(host):
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who reaches this machine can start "
                          "trainings and read the runs", markup=True, soft_wrap=True)
    bound_host, bound_port = sock.getsockname()[:2]
    console.print(f"tunelab ui for {runs} at http://{bound_host}:{bound_port}/ ; Ctrl-C stops", soft_wrap=True)
    run_server(application, sock)
