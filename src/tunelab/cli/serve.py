"""`tunelab serve RUN_DIR|MODEL`: an OpenAI-compatible HTTP server (parse, load through the API, serve)."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import TRUST_REMOTE_CODE_HELP, app, console, err_console, user_errors, warn_remote_code


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@app.command()
@user_errors
def serve(
    target: str = typer.Argument(..., help="A run directory (or offline bundle), or a model alias/folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; use --api-key)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY",
                                          help="Require `Authorization: Bearer KEY` on /v1/ routes."),
    served_model_name: Optional[str] = typer.Option(None, help="The model name clients send (default: the "
                                                    "run folder's or the model's name)."),
    max_batch: int = typer.Option(16, min=1, help="Most requests generated together in one batch."),
    gather_ms: float = typer.Option(10.0, min=0, help="How long concurrent requests are gathered into a batch."),
    max_queue: int = typer.Option(64, min=1, help="Most requests waiting; beyond that: 503 with Retry-After."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or mps (default: auto)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
):
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models;
    /v1/classify for classify and preference runs)."""
    from tunelab.api import load_target
    from tunelab.serve.app import bind_socket, create_app, run_server

    warn_remote_code(trust_remote_code)
    sock = bind_socket(host, port)  # before the model loads: a busy port is said at once
    run = load_target(target, device, trust_remote_code=trust_remote_code)
    name = served_model_name or Path(str(target).rstrip("/")).name
    application = create_app(run, name, api_key=api_key, max_batch=max_batch, gather_ms=gather_ms, max_queue=max_queue)
    if not _loopback(host) and not api_key:
        err_console.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who reaches this "
                          "machine can use the model", markup=True, soft_wrap=True)
    bound_host, bound_port = sock.getsockname()[:2]
    route = "/v1/classify" if "probabilistic" in run.task.capabilities() else "/v1/chat/completions"
    console.print(f"serving `{name}` ({run.task.name}) at http://{bound_host}:{bound_port}/v1 ({route}); "
                  "Ctrl-C stops", soft_wrap=True)
    run_server(application, sock)
