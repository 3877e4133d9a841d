"""The web UI: server-rendered pages over the same API the CLI calls, a small script for charts and streaming.

    /                   runs list (sort, filter, pick runs to compare)
    /runs/<name>        a run: config, live curves, metrics, data report, predictions, confusion matrix / ROUGE,
                        stop / resume / export
    /compare?run=a&run=b  curves overlaid, metrics side by side
    /new                a new run from an example or uploaded config, validated by the config schema
    /data               statistics, the validation report, token lengths, the template with trained tokens
    /chat               chat with a run or a packaged model, tokens streamed
    /api/...            JSON (and the streamed chat) behind those pages

A front end only: every mistake is a page or a JSON answer with a clear message, never a traceback. Files are
read only from the runs folder (and its uploads) and the package's own static folder.
"""
from __future__ import annotations

import contextlib
import html
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab import runs as runlib
from tunelab.errors import UserError

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".jsonl", ".parquet", ".csv.gz", ".tsv.gz", ".jsonl.gz", ".json.gz")
CONFIG_SUFFIXES = (".yaml", ".yml")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
FORM_FIELDS = [  # (dotted key, label, kind, help)
    ("model.name_or_path", "model", "text", "a packaged alias, a model folder or a finished run's final/ folder"),
    ("train.preset", "preset", "preset", "fast | balanced | quality | memory_efficient; explicit values win"),
    ("train.epochs", "epochs", "number", ""),
    ("train.max_steps", "max steps", "number", "stop after N optimizer steps (overrides epochs)"),
    ("train.learning_rate", "learning rate", "text", "e.g. 2e-4"),
    ("train.batch_size", "batch size", "number", ""),
    ("train.max_length", "max length", "number", "tokens per example"),
    ("lora.r", "LoRA rank", "number", ""),
    ("data.max_rows", "max rows", "number", "use only the first N rows (quick trials)"),
    ("data.eval_fraction", "eval fraction", "text", "share of rows held out, e.g. 0.1"),
    ("train.report_to", "report to", "tracker", "also log to TensorBoard / MLflow / Trackio (in the run dir)"),
]


class Page(Exception):
    """An error shown as a page (HTML) or a JSON answer, with its status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class UI:
    """State behind the pages: the runs folder, example configs, training processes, the loaded chat model."""

    def __init__(self, runs_dir: str | Path, examples_dir: str | Path | None = None):
        self.root = Path(runs_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.examples = Path(examples_dir) if examples_dir else None
        self.uploads = self.root / runlib.STATE_DIR / "uploads"
        self.jobs = runlib.Jobs(self.root)
        self.chat_lock = threading.Lock()
        self.chat_model: tuple[str, Any] | None = None

    # -- choices offered by the forms (and the only files the forms may name) -----------------------------------
    def config_choices(self) -> dict[str, Path]:
        out = {}
        if self.examples and self.examples.is_dir():
            for path in sorted(self.examples.glob("*.y*ml")):
                out[f"example:{path.name}"] = path
        if self.uploads.is_dir():
            for path in sorted(self.uploads.glob("*")):
                if path.name.endswith(CONFIG_SUFFIXES):
                    out[f"upload:{path.name}"] = path
        return out

    def data_choices(self) -> dict[str, Path]:
        from tunelab.resources import resource_path

        out = {}
        for name in ("qa_en_instructions.csv", "qa_ko_chatbot_sample.csv"):
            path = resource_path(name)
            if path.is_file():
                out[f"shipped:{name}"] = path
        if self.uploads.is_dir():
            for path in sorted(self.uploads.glob("*")):
                if path.name.lower().endswith(DATA_SUFFIXES):
                    out[f"upload:{path.name}"] = path
        return out

    def config_path(self, key: str) -> Path:
        choices = self.config_choices()
        if key not in choices:
            raise UserError(f"unknown config `{key}`: pick an example config or upload one")
        return choices[key]

    def data_path(self, key: str) -> Path | None:
        if not key:
            return None
        choices = self.data_choices()
        if key not in choices:
            raise UserError(f"unknown data file `{key}`: pick one of the list or upload one")
        return choices[key]

    def chat_targets(self) -> list[tuple[str, str]]:
        from tunelab.models.registry import list_models

        out = []
        for row in runlib.list_runs(self.root, self.jobs):
            if row["status"] == "finished" and row["task"] in ("sft", "summarize"):
                out.append((f"run:{row['name']}", f"run {row['name']} ({row['task']})"))
        for model in list_models():
            if model["kind"] == "decoder" and model["installed"]:
                out.append((f"model:{model['alias']}", f"model {model['alias']} (untrained)"))
        return out


# -- HTML helpers ------------------------------------------------------------------------------------------------
e = html.escape
NAV = (("/", "Runs"), ("/new", "New run"), ("/data", "Data"), ("/chat", "Chat"))


def page(ui: UI, title: str, body: str, here: str = "", status: int = 200) -> HTMLResponse:
    nav = "".join(f'<a href="{href}"{" class=here" if href == here else ""}>{label}</a>' for href, label in NAV)
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{e(title)} · tunelab</title>'
            f'<link rel="stylesheet" href="/static/style.css"><script src="/static/app.js" defer></script></head>'
            f'<body><header><a class="brand" href="/">tunelab</a><nav>{nav}</nav>'
            f'<span class="root">runs: {e(str(ui.root.resolve()))}</span></header><main>{body}</main></body></html>')
    return HTMLResponse(text, status_code=status)


def error_page(ui: UI, status: int, message: str) -> HTMLResponse:
    heading = {404: "Not found", 400: "Cannot do that", 500: "Something went wrong"}.get(status, "Error")
    return page(ui, heading, f'<h1>{heading}</h1><div class="message error" id="page-error">{e(message)}</div>'
                f'<p><a href="/">Back to the runs</a></p>', status=status)


def json_script(element_id: str, data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


def run_url(name: str) -> str:
    from urllib.parse import quote

    return "/runs/" + quote(name)


def status_badge(status: str) -> str:
    return f'<span class="status status-{e(status)}">{e(status)}</span>'


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- pages ---------------------------------------------------------------------------------------------------------
def runs_page(ui: UI) -> HTMLResponse:
    rows = runlib.list_runs(ui.root, ui.jobs)
    metric_keys = []
    for row in rows:
        metric_keys += [k for k in row["metrics"] if k not in metric_keys]
    metric_keys = metric_keys[:5]
    head = ('<th></th><th class="sortable" data-key="name">run</th><th class="sortable" data-key="task">task</th>'
            '<th class="sortable" data-key="model">model</th><th class="sortable" data-key="status">status</th>'
            + "".join(f'<th class="sortable num" data-key="m-{e(k)}">{e(k)}</th>' for k in metric_keys)
            + '<th class="sortable num" data-key="steps">steps</th><th class="sortable num" data-key="duration">duration</th>'
            '<th class="sortable" data-key="started">started</th>')
    body = []
    for row in rows:
        link = f'<a href="{run_url(row["name"])}">{e(row["name"])}</a>'
        cells = [f'<td><input type="checkbox" class="pick" value="{e(row["name"])}" aria-label="compare '
                 f'{e(row["name"])}"{"" if not row.get("no_folder") else " disabled"}></td>',
                 f'<td data-key="name" data-value="{e(row["name"])}">{link}</td>',
                 f'<td data-key="task" data-value="{e(row["task"])}">{e(row["task"])}</td>',
                 f'<td data-key="model" data-value="{e(row["model"])}" class="small">{e(row["model"])}</td>',
                 f'<td data-key="status" data-value="{e(row["status"])}" title="{e(row["detail"])}">'
                 f'{status_badge(row["status"])}</td>']
        for k in metric_keys:
            v = row["metrics"].get(k)
            cells.append(f'<td class="num" data-key="m-{e(k)}" data-value="{"" if v is None else v}">{fmt(v)}</td>')
        cells.append(f'<td class="num" data-key="steps" data-value="{row["steps"] or ""}">{row["steps"] or ""}</td>')
        cells.append(f'<td class="num" data-key="duration" data-value="{row["duration_s"] or ""}">'
                     f'{duration(row["duration_s"])}</td>')
        cells.append(f'<td data-key="started" data-value="{row["started"] or ""}" class="small">{when(row["started"])}</td>')
        body.append(f'<tr data-name="{e(row["name"])}" data-status="{e(row["status"])}">{"".join(cells)}</tr>')
    empty = ("" if rows else f'<div class="message info">No runs in {e(str(ui.root))} yet. '
             '<a href="/new">Start one</a> or run <code>tunelab train CONFIG --output-dir '
             f'{e(str(ui.root))}/NAME</code>.</div>')
    statuses = "".join(f'<option value="{s}">{s}</option>' for s in runlib.STATUSES)
    html_body = (f'<h1>Runs</h1><div class="toolbar"><input type="text" id="filter" placeholder="filter: name, task, '
                 f'model…" aria-label="filter runs"><select id="status-filter" aria-label="status"><option value="">'
                 f'any status</option>{statuses}</select><button id="compare" disabled>Compare selected</button>'
                 f'<span class="muted small" id="shown-count"></span><a class="button" href="/new">New run</a></div>'
                 f'{empty}<table id="runs-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return page(ui, "Runs", html_body, "/")


def run_page(ui: UI, name: str) -> HTMLResponse:
    job = ui.jobs.get(name)
    try:
        run = runlib.read_run(ui.root, name, job)
    except UserError as exc:
        status = 404 if "no run named" in str(exc) else 400
        raise Page(status, str(exc)) from None
    run["job_alive"] = bool(job and job.get("alive"))
    buttons = []
    if run["status"] == "running" and run["job_alive"]:
        buttons.append('<button class="danger" data-action="stop">Stop (saves a checkpoint)</button>')
    if run["resumable"] and run["status"] != "running":
        buttons.append('<button class="primary" data-action="resume">Resume</button>')
    if run["exportable"]:
        buttons.append('<button data-action="export">Export offline bundle</button>')
    export = ui.jobs.get(f"{name}.export")
    export_line = ""
    if export:
        state = "running" if export["alive"] else ("written to " + export.get("target", "") if export.get("returncode") == 0
                                                   else f"failed: {export.get('last_line') or export.get('returncode')}")
        export_line = f'<p class="small muted" id="export-state">export: {e(state)}</p>'
    facts = [["task", e(run["task"])], ["model", e(run["model"])], ["status", status_badge(run["status"]) + " "
             + f'<span class="small muted">{e(run["detail"])}</span>'], ["steps", fmt(run["steps"])],
             ["duration", duration(run["duration_s"])], ["started", when(run["started"])],
             ["time estimate", f'<span id="time-estimate">{e(run["time_estimate"] or "")}</span>']]
    metrics = run["all_metrics"]
    metric_rows = [[e(k), f'<span class="num">{fmt(v)}</span>'] for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
    sections = [f'<h1>{e(name)}</h1><div class="toolbar">{"".join(buttons)}</div>'
                f'<div class="message" id="run-message"></div>{export_line}',
                '<div class="grid"><div>' + table(["", ""], facts, "kv") + "</div><div>"
                + (table(["metric", "value"], metric_rows, "kv") if metric_rows else
                   '<p class="muted">No metrics yet.</p>') + "</div></div>",
                '<h2>Curves</h2><div class="grid"><div class="card chart" id="chart-loss"></div>'
                '<div class="card" hidden><div class="chart" id="chart-eval"></div></div></div>']
    if run["rouge"]:
        sections.append("<h2>ROUGE</h2>" + table(["metric", "value"], [[e(k), fmt(v)] for k, v in run["rouge"].items()]))
    if run["confusion"]:
        c = run["confusion"]
        head = "".join(f"<th>{e(label)}</th>" for label in c["labels"])
        body_rows = "".join(
            f"<tr><th>{e(label)}</th>" + "".join(f'<td{" class=diag" if i == j else ""}>{n}</td>'
                                                  for j, n in enumerate(c["matrix"][i])) + "</tr>"
            for i, label in enumerate(c["labels"]))
        body = (f'<table class="confusion" id="confusion"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
                f"<tbody>{body_rows}</tbody></table>")
        sections.append(f'<h2>Confusion matrix</h2><p class="small muted">{c["rows"]} held-out rows'
                        f'{"" if c["shown_all"] else ", most frequent labels shown"}</p>{body}')
    if run["data_report"]:
        items = []
        for report in run["data_report"]:
            dropped = [(k, report.get(k, 0)) for k in ("empty", "duplicates", "overlong", "filtered_out", "limited",
                                                       "overlong_dropped") if report.get(k)]
            rows = [[e(k.replace("_", " ")), str(n), e(", ".join(map(str, (report.get("examples") or {}).get(k, []))))]
                    for k, n in dropped]
            items.append(f'<p><b>{e(str(report.get("source")))}</b>: {report.get("rows_read")} read → '
                         f'{report.get("rows_valid")} valid → {report.get("rows_train")} train / '
                         f'{report.get("rows_eval")} eval</p>'
                         + (table(["dropped / changed", "rows", "example rows"], rows) if rows else
                            '<p class="small muted">no rows dropped</p>')
                         + "".join(f'<p class="small">note: {e(n)}</p>' for n in report.get("notes") or []))
        sections.append("<h2>Data report</h2>" + "".join(items))
    if run["predictions"]:
        keys = []
        for record in run["predictions"]:
            keys += [k for k in record if k not in keys]
        keys = keys[:8]
        rows = [[e(fmt(r.get(k)) if not isinstance(r.get(k), (list, dict)) else json.dumps(r.get(k))[:200])
                 for k in keys] for r in run["predictions"]]
        sections.append("<h2>Predictions on held-out rows (sample)</h2>" + table([e(k) for k in keys], rows, "small"))
    sections.append(f'<h2>Resolved config</h2><pre id="config-text">{e(run["config_text"])}</pre>')
    sections.append(f'<h2>Log</h2><pre id="log-tail">{e(chr(10).join(run["log_tail"]))}</pre>')
    light = {k: run[k] for k in ("name", "status", "curves", "job_alive", "time_estimate")}
    sections.append(json_script("run-data", light))
    return page(ui, name, "".join(sections))


def compare_page(ui: UI, names: list[str]) -> HTMLResponse:
    names = [n for n in dict.fromkeys(names) if n]
    if len(names) < 2:
        raise Page(400, "pick two or more runs to compare (tick them in the runs list)")
    loaded = []
    for name in names:
        try:
            loaded.append(runlib.read_run(ui.root, name, ui.jobs.get(name)))
        except UserError as exc:
            raise Page(404, str(exc)) from None
    keys = []
    for run in loaded:
        keys += [k for k, v in run["all_metrics"].items() if k not in keys and isinstance(v, (int, float))
                 and not isinstance(v, bool)]
    rows = [[e(k)] + [fmt(run["all_metrics"].get(k)) for run in loaded] for k in keys]
    facts = [["task"] + [e(r["task"]) for r in loaded], ["model"] + [e(r["model"]) for r in loaded],
             ["status"] + [status_badge(r["status"]) for r in loaded], ["duration"] + [duration(r["duration_s"]) for r in loaded]]
    head = [""] + [f'<a href="{run_url(r["name"])}">{e(r["name"])}</a>' for r in loaded]
    body = (f'<h1>Compare {len(loaded)} runs</h1><div class="grid"><div class="card chart" id="chart-compare-loss"></div>'
            f'<div class="card chart" id="chart-compare-eval"></div></div><h2>Metrics</h2>'
            + table(head, facts + rows, "compare")
            + json_script("compare-data", [{"name": r["name"], "curves": r["curves"]} for r in loaded]))
    return page(ui, "Compare", body, "/")


def options(choices, selected: str = "", empty: str | None = None) -> str:
    out = [f'<option value="">{e(empty)}</option>'] if empty is not None else []
    for value, label in choices:
        out.append(f'<option value="{e(value)}"{" selected" if value == selected else ""}>{e(label)}</option>')
    return "".join(out)


def new_run_page(ui: UI) -> HTMLResponse:
    from tunelab.config import PRESETS

    configs = [(k, k.split(":", 1)[1] + (" (uploaded)" if k.startswith("upload:") else "")) for k in ui.config_choices()]
    data = [(k, k.split(":", 1)[1] + {"shipped": " (shipped sample)", "upload": " (uploaded)"}[k.split(":")[0]])
            for k in ui.data_choices()]
    rows = [f'<label for="f-config">config</label><div><select id="f-config" name="config">{options(configs)}</select> '
            f'or upload <input type="file" id="config-upload" accept=".yaml,.yml" aria-label="upload a config">'
            f'<div class="field-error" data-for="config"></div></div>',
            f'<label for="f-data">data file</label><div><select id="f-data" name="data">'
            f'{options(data, empty="the config’s data.train_path")}</select> or upload <input type="file" '
            f'id="data-upload" aria-label="upload a data file"><div class="field-error" data-for="data.train_path"></div>'
            f'</div>',
            '<label for="f-name">run name</label><div><input type="text" id="f-name" name="name" placeholder="default: '
            'TASK-DATE-TIME" size="40"><div class="help">the run folder under the runs folder</div>'
            '<div class="field-error" data-for="name"></div></div>']
    for key, label, kind, help_text in FORM_FIELDS:
        ident = "f-" + key.replace(".", "-")
        if kind == "preset":
            field = (f'<select id="{ident}" name="{key}" data-setting="1">'
                     f'{options([(p, p) for p in PRESETS], empty="from the config")}</select>')
        elif kind == "tracker":
            field = (f'<select id="{ident}" name="{key}" data-setting="1">'
                     f'{options([(p, p) for p in ("none", "tensorboard", "mlflow", "trackio")], empty="from the config")}'
                     '</select>')
        else:
            field = (f'<input type="text" id="{ident}" name="{key}" data-setting="1" placeholder="from the config" '
                     f'size="{40 if key == "model.name_or_path" else 14}"'
                     + (' list="models"' if key == "model.name_or_path" else "") + ">")
        rows.append(f'<label for="{ident}">{e(label)}</label><div>{field}<span class="help"> {e(help_text)} '
                    f'<code>{e(key)}</code></span><div class="field-error" data-for="{e(key)}"></div></div>')
    rows.append('<label for="f-extra">other settings</label><div><textarea id="f-extra" name="extra" rows="3" '
                'placeholder="one per line: section.key=value, e.g. lora.dropout=0.05"></textarea>'
                '<div class="field-error" data-for="extra"></div></div>')
    from tunelab.models.registry import list_models

    datalist = "".join(f'<option value="{e(m["alias"])}">' for m in list_models())
    body = (f'<h1>New run</h1><p class="muted">Training runs as a separate <code>tunelab train</code> process: closing '
            f'this page does not stop it; Stop on its page saves a checkpoint that Resume continues.</p>'
            f'<form id="new-run" class="settings" autocomplete="off">{"".join(rows)}'
            f'<span></span><div><button id="check">Check</button> <button class="primary" id="start" type="submit">'
            f'Start training</button><p id="estimate" class="small"></p><div class="message" id="form-message"></div>'
            f'</div></form><datalist id="models">{datalist}</datalist>')
    return page(ui, "New run", body, "/new")


def parse_form(ui: UI, body: dict) -> tuple[dict, dict[str, Any], str, dict[str, str]]:
    """(raw config, overrides, source name, errors of the form itself) from the new-run form's JSON."""
    from tunelab.config.io import parse_value, read_yaml

    errors: dict[str, str] = {}
    raw: dict = {}
    source = "config"
    try:
        path = ui.config_path(str(body.get("config") or ""))
        raw, source = read_yaml(path), path.name
    except UserError as exc:
        errors["config"] = str(exc)
    overrides: dict[str, Any] = {}
    for key, value in (body.get("overrides") or {}).items():
        if key in {f[0] for f in FORM_FIELDS} and isinstance(value, str) and value.strip():
            overrides[key] = value.strip() if key == "model.name_or_path" else parse_value(value.strip())
    for n, line in enumerate(str(body.get("extra") or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or "" in key.strip().split("."):
            errors["extra"] = f"line {n}: expected section.key=value, got `{line}`"
            continue
        overrides[key.strip()] = parse_value(value.strip())
    try:
        data = ui.data_path(str(body.get("data") or ""))
        if data is not None:
            overrides["data.train_path"] = str(data)
    except UserError as exc:
        errors["data.train_path"] = str(exc)
    return raw, overrides, source, errors


def check_form(ui: UI, body: dict, with_estimate: bool = True) -> dict:
    raw, overrides, source, errors = parse_form(ui, body)
    name = str(body.get("name") or "").strip()
    if name:
        try:
            runlib.check_name(name)
            if (ui.root / name).exists():
                errors["name"] = f"a run named `{name}` already exists; choose another name"
        except UserError as exc:
            errors["name"] = str(exc)
    if "config" in errors:
        return {"ok": False, "errors": errors}
    config, problems = runlib.validate_config(raw, overrides, source=source)
    errors.update(problems)
    answer: dict = {"ok": not errors, "errors": errors}
    if config is not None and with_estimate and "data.train_path" not in errors:
        try:
            answer["estimate"] = runlib.estimate(config, ui.root)
        except UserError as exc:
            errors["data.train_path"] = str(exc)
            answer["ok"] = False
    if config is not None:  # what each field holds when left empty, shown as its placeholder
        answer["defaults"] = {key: _dotted(config, key) for key, *_ in FORM_FIELDS}
    answer["config"] = config
    return answer


def _dotted(config, key: str) -> Any:
    section, name = key.split(".", 1)
    value = getattr(getattr(config, section), name, None)
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def data_page(ui: UI, config_key: str, data_key: str, rows: int) -> HTMLResponse:
    configs = [(k, k.split(":", 1)[1]) for k in ui.config_choices()]
    data = [(k, k.split(":", 1)[1]) for k in ui.data_choices()]
    form = (f'<form id="data-form" method="get" action="/data" class="toolbar"><label>config <select name="config">'
            f'{options(configs, config_key)}</select></label> <input type="file" id="config-upload" accept=".yaml,.yml" '
            f'aria-label="upload a config"><label>data <select name="data">'
            f'{options(data, data_key, empty="the config’s data.train_path")}</select></label> <input type="file" '
            f'id="data-upload" aria-label="upload a data file"><label>rows shown <input type="number" name="rows" '
            f'value="{rows}" min="1" max="20" style="width:4em"></label><button class="primary" type="submit">Show'
            f'</button></form><div class="message" id="data-message"></div>')
    sections = ['<h1>Data</h1><p class="muted">What training will see: the file’s statistics, the validation report '
                '(rows dropped and why), token lengths against max_length, and the rendered template with the tokens '
                'the loss falls on.</p>', form]
    if config_key:
        try:
            sections.append(_data_report(ui, config_key, data_key, rows))
        except UserError as exc:
            sections.append(f'<div class="message error" id="data-error">{e(str(exc))}</div>')
    return page(ui, "Data", "".join(sections), "/data")


def _data_report(ui: UI, config_key: str, data_key: str, rows: int) -> str:
    import numpy as np

    from tunelab.config import load_config
    from tunelab.data.pipeline import load_splits
    from tunelab.data.readers import read_table
    from tunelab.data.stats import describe
    from tunelab.lab.lengths import length_report
    from tunelab.lab.template import LEGEND_SEQUENCE, LEGEND_TOKENS, example_summary, template_view, totals_line
    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task

    path = ui.config_path(config_key)
    data = ui.data_path(data_key)
    config = load_config(path, {"data.train_path": str(data) if data else None})
    if not config.data.train_path:
        raise UserError(f"{path.name} names no data.train_path: pick a data file")
    out = []
    info = describe(read_table(config.data.train_path, config.data.encoding))
    stat_rows = [[e(name), str(c["empty"]), fmt(c.get("unique")), fmt(c.get("chars_mean")), fmt(c.get("chars_p95")),
                  fmt(c.get("chars_max")), e(", ".join(f"{k}={v}" for k, v in list(c.get("counts", {}).items())[:6]))]
                 for name, c in info["columns"].items()]
    out.append(f'<h2>Statistics</h2><p>{e(config.data.train_path)}: {info["rows"]} rows, {info["duplicate_rows"]} '
               f'duplicate rows{", encoding " + e(str(info["encoding"])) if info.get("encoding") else ""}</p>'
               + table(["column", "empty", "unique", "chars mean", "p95", "max", "top values"], stat_rows, "small"))
    task = get_task(config.task.name)(config)
    tokenizer = load_tokenizer(config.model)
    splits = load_splits(config, task, tokenizer)
    lines = [line for report in splits.reports for line in report.lines()]
    out.append(f'<h2>Validation report</h2><pre id="validation-report">{e(chr(10).join(lines))}\nsplit: '
               f'{len(splits.train)} train / {len(splits.eval)} eval rows</pre>')
    task.fit(splits.train)
    lengths = task.input_lengths(splits.train, tokenizer)
    report = length_report(lengths, config.train.max_length, None)
    counts, edges = np.histogram(np.asarray(lengths), bins=min(40, max(5, len(set(lengths))))) if lengths else ([], [0, 1])
    hist = {"counts": [int(c) for c in counts], "edges": [float(x) for x in edges], "max_length": config.train.max_length}
    facts = ", ".join(f"{k} {fmt(report[k])}" for k in ("rows", "mean", "p50", "p95", "p99", "max", "truncated_rows"))
    out.append(f'<h2>Token lengths</h2><p class="small">{e(facts)}</p><p>{e(report["advice"])}</p>'
               f'<div class="card chart" id="chart-lengths"></div>{json_script("lengths-data", hist)}')
    view = template_view(config, rows=rows, config_path=path.name)
    parts = [f'<h2>Template: what training sees</h2><p class="small muted">model {e(view.model)} · '
             f'{e(view.rendering)} · max_length {view.max_length}</p><p class="small">{e(totals_line(view))}</p>'
             f'<p class="legend small">{LEGEND_TOKENS if view.token_level else LEGEND_SEQUENCE} · hover a token for its '
             f'id</p>']
    for example in view.examples:
        spans = []
        for piece, trained in zip(example.pieces, example.trained):
            kind = "input" if example.labels is None else ("trained" if trained else "masked")
            classes = ["tok", kind] + (["odd"] if piece.position % 2 else []) + (["special"] if piece.special else [])
            text = e(piece.text).replace("\n", '<span class="nl">↵</span>\n')
            spans.append(f'<span class="{" ".join(classes)}" title="#{piece.position} id {piece.id}">{text}</span>')
        parts.append(f'<h3 class="small">row {example.row}{" · " + e(example.variant) if example.variant else ""} — '
                     f'{e(example_summary(example))}</h3><div class="tokens">{"".join(spans)}</div>')
    out.append("".join(parts))
    return "".join(out)


def chat_page(ui: UI, target: str) -> HTMLResponse:
    targets = ui.chat_targets()
    if not targets:
        return page(ui, "Chat", '<h1>Chat</h1><div class="message info">Nothing to chat with yet: no finished '
                    'sft/summarize run and no packaged decoder model installed.</div>', "/chat")
    body = (f'<h1>Chat</h1><form id="chat-form" class="chat-layout" autocomplete="off"><div>'
            f'<div id="chat-log" class="chat-log" aria-live="polite"></div><div class="toolbar">'
            f'<textarea name="message" rows="2" placeholder="your message (Enter sends)" aria-label="message"></textarea>'
            f'</div><div class="toolbar"><button class="primary" id="chat-send" type="submit">Send</button>'
            f'<button id="chat-reset">New conversation</button></div></div><div class="chat-controls">'
            f'<label for="c-target">model</label><select id="c-target" name="target">{options(targets, target)}</select>'
            f'<label for="c-system">system prompt</label><textarea id="c-system" name="system" rows="2"></textarea>'
            f'<label for="c-max">max new tokens</label><input type="number" id="c-max" name="max_new_tokens" value="128" '
            f'min="1" max="2048"><label for="c-temp">temperature</label><input type="number" id="c-temp" '
            f'name="temperature" value="0.7" min="0.01" max="2" step="any"><label for="c-topp">top p</label>'
            f'<input type="number" id="c-topp" name="top_p" value="0.9" min="0.01" max="1" step="any">'
            f'<label><input type="checkbox" name="greedy"> greedy (no sampling)</label></div></form>'
            '<script>document.addEventListener("DOMContentLoaded",()=>{const t=document.querySelector(\'[name=message]\');'
            't.addEventListener("keydown",ev=>{if(ev.key==="Enter"&&!ev.shiftKey){ev.preventDefault();'
            'document.getElementById("chat-form").requestSubmit();}});});</script>')
    return page(ui, "Chat", body, "/chat")


# -- chat -----------------------------------------------------------------------------------------------------------
def _number(body: dict, key: str, default: float, low: float, high: float, kind=float) -> Any:
    value = body.get(key, default)
    if value in ("", None):
        return default
    try:
        number = kind(float(value))
    except (TypeError, ValueError):
        raise UserError(f"{key.replace('_', ' ')} must be a number, got `{value}`") from None
    if not low <= number <= high:
        raise UserError(f"{key.replace('_', ' ')} must be between {low} and {high}, got {number}")
    return number


def chat_stream(ui: UI, body: dict) -> Iterator[str]:
    """Check the request and load the model (UserErrors before any text is sent), then the reply's text pieces."""
    from tunelab.api import load, load_base
    from tunelab.inference.batching import chat_prompt
    from tunelab.inference.engine import GenerationEngine
    from tunelab.tasks.base import GenerativeTask

    target = str(body.get("target") or "")
    if target not in dict(ui.chat_targets()):
        raise UserError(f"unknown model `{target}`: pick a finished run or a packaged model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        raise UserError("send at least one message")
    max_new_tokens = _number(body, "max_new_tokens", 128, 1, 2048, int)
    temperature = _number(body, "temperature", 0.7, 0.01, 2.0)
    top_p = _number(body, "top_p", 0.9, 0.01, 1.0)
    greedy = bool(body.get("greedy"))
    system = str(body.get("system") or "").strip()
    with ui.chat_lock:  # one model loads at a time; the loaded one is kept for the next message
        if ui.chat_model is None or ui.chat_model[0] != target:
            ui.chat_model = None
            kind, name = target.split(":", 1)
            run = (load(runlib.run_path(ui.root, name), capability=GenerativeTask, action="chat") if kind == "run"
                   else load_base(name))
            ui.chat_model = (target, GenerationEngine(run.model, run.tokenizer, run.config.generation))
        engine = ui.chat_model[1]
    conversation = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = chat_prompt(engine.tokenizer, conversation)
    pieces = engine.stream(prompt, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature,
                           top_p=top_p)

    def text() -> Iterator[str]:
        try:
            for piece in pieces:
                if piece:
                    yield piece
        except Exception as exc:  # headers are sent: the error goes in the stream, marked for the page
            log.exception("chat generation failed")
            yield f"\u0000error: generation failed: {type(exc).__name__}: {exc}"

    return text()


# -- the app -----------------------------------------------------------------------------------------------------------
CSRF_HEADER = "x-tunelab-ui"
"""Every POST (start a training, upload, chat) carries this header, which the page's script sends: a page on another
site cannot add it without the browser asking this server first (CORS preflight, never granted), so it cannot make
a browser start trainings or upload files here."""
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _hostname(header: str) -> str:
    """`127.0.0.1` of `127.0.0.1:7860`, `[::1]` of `[::1]:7860`."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(runs_dir: str | Path = "runs", examples_dir: str | Path | None = None,
               allowed_hosts: set[str] | None = None) -> FastAPI:
    """The UI app. `allowed_hosts`: host names the Host header may carry (None: any), so a page on another site that
    rebinds its DNS name to 127.0.0.1 cannot read the UI."""
    ui = UI(runs_dir, examples_dir)
    app = FastAPI(title="tunelab ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = ui

    @app.middleware("http")
    async def _same_site(request: Request, call_next):
        host = _hostname(request.headers.get("host") or "")
        if allowed_hosts is not None and host not in allowed_hosts:
            return JSONResponse({"ok": False, "error": f"host `{host}` is not served here"}, status_code=403)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if request.headers.get(CSRF_HEADER) != "1" or (origin and origin.split("://", 1)[-1] != request.headers.get("host")):
                return JSONResponse({"ok": False, "error": "refused: requests that change anything come from the UI's "
                                     "own pages"}, status_code=403)
        return await call_next(request)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def problem(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"ok": False, "error": message}, status_code=status)
        return error_page(ui, status, message)

    @app.exception_handler(Page)
    async def _page(request: Request, exc: Page):
        return problem(request, exc.status, exc.message)

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError):
        return problem(request, 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = {404: f"there is no page at {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return problem(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        text = str(exc).splitlines()[0] if str(exc) else ""
        return problem(request, 500, f"tunelab could not answer this ({type(exc).__name__}{': ' + text if text else ''}); "
                       "the details are in the server's log")

    async def json_body(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise Page(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Page(400, "the request body must be a JSON object")
        return body

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise Page(404, f"no static file {name}")
        media = {"js": "text/javascript", "css": "text/css"}.get(path.suffix[1:], "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return await run_in_threadpool(runs_page, ui)

    @app.get("/runs/{name:path}", response_class=HTMLResponse)
    async def run_view(name: str):
        return await run_in_threadpool(run_page, ui, name.strip("/"))

    @app.get("/compare", response_class=HTMLResponse)
    async def compare(request: Request):
        names = request.query_params.getlist("run")
        for value in request.query_params.getlist("runs"):
            names += value.split(",")
        return await run_in_threadpool(compare_page, ui, names)

    @app.get("/new", response_class=HTMLResponse)
    async def new_run():
        return await run_in_threadpool(new_run_page, ui)

    @app.get("/data", response_class=HTMLResponse)
    async def data(config: str = "", data: str = "", rows: str = "3"):
        shown = int(rows) if rows.isdigit() and 1 <= int(rows) <= 20 else 3
        return await run_in_threadpool(data_page, ui, config, data, shown)

    @app.get("/chat", response_class=HTMLResponse)
    async def chat(target: str = ""):
        return await run_in_threadpool(chat_page, ui, target)

    # -- JSON API ------------------------------------------------------------------------------------------------
    @app.get("/api/runs")
    async def api_runs():
        return {"ok": True, "runs": await run_in_threadpool(runlib.list_runs, ui.root, ui.jobs)}

    @app.get("/api/runs/{name:path}")
    async def api_run(name: str):
        def read():
            job = ui.jobs.get(name)
            run = runlib.read_run(ui.root, name, job)
            run["job_alive"] = bool(job and job.get("alive"))
            return run
        try:
            return {"ok": True, "run": await run_in_threadpool(read)}
        except UserError as exc:
            raise Page(404 if "no run named" in str(exc) else 400, str(exc)) from None

    @app.post("/api/runs/{name:path}/stop")
    async def api_stop(name: str):
        await run_in_threadpool(ui.jobs.stop, name)
        return {"ok": True, "message": "stopping: the current step finishes, a checkpoint is saved, then it exits "
                                       "(Resume continues it)"}

    @app.post("/api/runs/{name:path}/resume")
    async def api_resume(name: str):
        await run_in_threadpool(runlib.resume_training, ui.root, ui.jobs, name)
        return {"ok": True, "message": "resuming in a new tunelab train process"}

    @app.post("/api/runs/{name:path}/export")
    async def api_export(name: str):
        _, target = await run_in_threadpool(runlib.export_run, ui.root, ui.jobs, name)
        return {"ok": True, "message": f"exporting an offline bundle to {target}"}

    @app.post("/api/validate")
    async def api_validate(request: Request):
        body = await json_body(request)
        answer = await run_in_threadpool(check_form, ui, body)
        answer.pop("config", None)
        return answer

    @app.post("/api/train")
    async def api_train(request: Request):
        body = await json_body(request)
        answer = await run_in_threadpool(check_form, ui, body, False)
        config = answer.pop("config", None)
        if not answer["ok"] or config is None:
            return JSONResponse(answer, status_code=400)
        from datetime import datetime

        name = str(body.get("name") or "").strip() or f"{config.task.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        try:
            await run_in_threadpool(runlib.start_training, ui.root, ui.jobs, config, name)
        except UserError as exc:
            return JSONResponse({"ok": False, "errors": {"name": str(exc)}}, status_code=400)
        return {"ok": True, "run": name, "url": run_url(name)}

    @app.post("/api/upload")
    async def api_upload(request: Request, kind: str = "", name: str = ""):
        if kind not in ("data", "config"):
            raise Page(400, "upload kind must be `data` or `config`")
        base = Path(name.replace("\\", "/")).name
        allowed = DATA_SUFFIXES if kind == "data" else CONFIG_SUFFIXES
        if not base.lower().endswith(allowed) or base.startswith("."):
            raise Page(400, f"`{base or name}` is not a {kind} file this UI takes: use "
                            f"{', '.join(allowed)}")
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
            raise Page(413, f"`{base}` is larger than the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
        content = await request.body()
        if not content:
            raise Page(400, f"`{base}` is empty")
        if len(content) > MAX_UPLOAD_BYTES:
            raise Page(413, f"`{base}` is larger than the {MAX_UPLOAD_BYTES // 2**20} MB upload limit")
        ui.uploads.mkdir(parents=True, exist_ok=True)
        target = ui.uploads / safe

        def check_and_save():
            tmp = ui.uploads / f".check-{safe}"
            tmp.write_bytes(content)
            try:
                if kind == "config":
                    from tunelab.config.io import read_yaml

                    read_yaml(tmp)
                else:
                    from tunelab.data.readers import read_table

                    frame = read_table(tmp)
                    if frame.empty:
                        raise UserError(f"{base}: no data rows")
                tmp.replace(target)
            except UserError as exc:
                tmp.unlink(missing_ok=True)
                raise UserError(str(exc).replace(str(tmp), base)) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        await run_in_threadpool(check_and_save)
        return {"ok": True, "name": safe, "value": f"upload:{safe}"}

    @app.post("/api/chat")
    async def api_chat(request: Request):
        body = await json_body(request)
        pieces = await run_in_threadpool(chat_stream, ui, body)
        return StreamingResponse(pieces, media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


@contextlib.contextmanager
def background(runs_dir: str | Path, examples_dir: str | Path | None = None, port: int = 0):
    """The UI served from a thread on a free loopback port (tests): yields its base URL."""
    from tunelab.serve.app import BackgroundServer

    server = BackgroundServer(create_app(runs_dir, examples_dir, LOOPBACK_NAMES), "127.0.0.1", port).start()
    try:
        yield server.url
    finally:
        server.stop()
