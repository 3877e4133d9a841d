"""The web UI (`tunelab ui`), driven in a real headless browser: Debian's chromium through Playwright for Python
(scripts/test.sh installs chromium when it is missing). A tiny random Llama trains in seconds, so the tests open the
runs list, a run's chart, start a training from the form and see it finish, chat with streamed text and see a field
error for a bad override. Screenshots of each page go to the test's temporary folder; with
TUNELAB_UPDATE_SCREENSHOTS=1 the two in the README (docs/img/) are rewritten too.

Also here, without a browser: run status read from run dirs, stop (a clean SIGINT) and resume of a training started
as a separate process, and `train.report_to` (TensorBoard event files in the run dir; a clear error for a tracker
that is not installed)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_sft_raw

REPO = Path(__file__).resolve().parents[1]
WAIT_MS = 20_000


def _train(raw: dict):
    import tunelab

    return tunelab.train(tunelab.build_config(raw), echo=lambda *a, **k: None)


@pytest.fixture(scope="module")
def ui_site(tmp_path_factory, tiny_llama):
    """A runs folder with one finished run (curves with eval points) and one broken run dir, an examples folder with
    a tiny config, and the UI served on a free loopback port."""
    from tunelab.ui.app import background

    base = tmp_path_factory.mktemp("ui")
    runs, examples = base / "runs", base / "examples"
    examples.mkdir()
    _train(tiny_sft_raw(tiny_llama, runs / "first", max_steps=6, eval_steps=2, save_steps=2))
    (runs / "broken").mkdir()
    (runs / "broken" / "config.yaml").write_text("task: [unclosed\n")
    odd = runs / "odd"  # readable config, garbage everywhere else: its page still shows
    odd.mkdir()
    (odd / "config.yaml").write_text("task: sft\n")
    (odd / "metrics.json").write_text("[1, 2]")
    (odd / "history.jsonl").write_text('5\n{"step": 1, "loss": 2.0}\n{torn')
    (odd / "data_report.json").write_text('{"not": "a list"}')
    (odd / "eval_predictions.jsonl").write_text('"text"\n[1]\n')
    example = tiny_sft_raw(tiny_llama, "unused", max_steps=4)
    example["train"].pop("output_dir")
    (examples / "tiny.yaml").write_text(yaml.safe_dump(example))
    shots = base / "screenshots"
    shots.mkdir()
    with background(runs, examples) as url:
        yield {"url": url, "runs": runs, "shots": shots, "model": tiny_llama}


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable (scripts/test.sh installs it: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_site):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page, ui_site, name: str, readme: bool = False) -> Path:
    path = ui_site["shots"] / f"{name}.png"
    if readme:  # the README's: the top of the page, no empty space below the content
        bottom = page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1280, "height": min(max(bottom, 200), 860)})
    else:
        page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5_000
    if readme and os.environ.get("TUNELAB_UPDATE_SCREENSHOTS") == "1":
        target = REPO / "docs" / "img" / f"ui-{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def no_traceback(page) -> None:
    text = page.content()
    assert "Traceback" not in text and "File \"" not in text


browser_test = pytest.mark.e2e  # in CI a skipped browser test is a failure (conftest)


@browser_test
def test_runs_list_and_a_run_page_with_its_chart(page, ui_site):
    page.goto(ui_site["url"] + "/")
    row = page.locator('#runs-table tr[data-name="first"]')
    assert row.locator(".status").inner_text() == "finished"
    assert page.locator('#runs-table tr[data-name="broken"] .status').inner_text() == "failed"
    assert row.locator('td[data-key="m-eval_loss"]').inner_text().strip() != ""
    page.fill("#filter", "no-such-run")
    assert page.locator('#runs-table tr[data-name="first"]').is_hidden()
    assert "0 of 3" in page.inner_text("#shown-count")
    assert "q=no-such-run" in page.url  # the filtered list has its own address
    page.fill("#filter", "")
    page.click('th[data-key="name"]')  # sort by name, descending first, then ascending
    page.click('th[data-key="name"]')
    assert page.locator("#runs-table tbody tr").first.get_attribute("data-name") == "broken"
    page.click('th[data-key="name"]')
    assert page.locator("#runs-table tbody tr").first.get_attribute("data-name") == "odd"
    assert "sort=name" in page.url
    shot(page, ui_site, "runs")

    page.click('#runs-table a[href="/runs/first"]')
    page.wait_for_url("**/runs/first")
    loss = page.locator('#chart-loss path.series[data-name="train loss"]')
    loss.wait_for()
    assert int(loss.get_attribute("data-points")) >= 6
    assert loss.get_attribute("d").count("L") >= 5  # a drawn line through every logged step
    evals = page.locator('#chart-loss path.series[data-name="eval loss"]')
    assert int(evals.get_attribute("data-points")) >= 3  # before training + the evaluations
    assert "sft" in page.inner_text("body") and "eval_loss" in page.inner_text("body")
    assert "task:" in page.inner_text("#config-text")
    assert "no rows dropped" in page.inner_text("body") or "limited" in page.inner_text("body")
    assert page.locator("text=Predictions on held-out rows").count() == 1
    shot(page, ui_site, "run", readme=True)


@browser_test
def test_clear_messages_never_tracebacks(page, ui_site):
    response = page.goto(ui_site["url"] + "/runs/no-such-run")
    assert response.status == 404
    assert "no run named `no-such-run`" in page.inner_text("#page-error")
    response = page.goto(ui_site["url"] + "/runs/broken")
    assert response.status == 400
    assert "config.yaml cannot be read" in page.inner_text("#page-error")
    no_traceback(page)
    response = page.goto(ui_site["url"] + "/runs/odd")
    assert response.status == 200 and page.locator(".status").inner_text() == "failed"
    page.locator('#chart-loss path.series[data-points="1"]').wait_for(state="attached")  # the one valid record
    no_traceback(page)
    response = page.goto(ui_site["url"] + "/runs/../../etc")
    assert response.status == 404
    response = page.goto(ui_site["url"] + "/static/../app.py")
    assert response.status == 404
    no_traceback(page)
    ui = {"X-Tunelab-UI": "1"}
    answer = page.request.post(ui_site["url"] + "/api/upload?kind=data&name=evil.exe", data=b"MZ", headers=ui)
    assert answer.status == 400 and "not a data file" in answer.json()["error"]
    answer = page.request.post(ui_site["url"] + "/api/upload?kind=config&name=bad.yaml", data=b"task: [\n", headers=ui)
    assert answer.status == 400 and "not valid YAML" in answer.json()["error"]
    answer = page.request.post(ui_site["url"] + "/api/upload?kind=data&name=empty.csv", data=b"", headers=ui)
    assert answer.status == 400 and "empty" in answer.json()["error"]
    # a request from another site (no UI header, or a foreign Origin) changes nothing
    answer = page.request.post(ui_site["url"] + "/api/upload?kind=data&name=x.csv", data=b"a,b\n1,2\n")
    assert answer.status == 403
    answer = page.request.post(ui_site["url"] + "/api/upload?kind=data&name=x.csv", data=b"a,b\n1,2\n",
                               headers={**ui, "Origin": "http://evil.example"})
    assert answer.status == 403
    assert not (ui_site["runs"] / ".tunelab-ui" / "uploads" / "x.csv").exists()
    # a bad upload through the page: the message is shown beside the form
    page.goto(ui_site["url"] + "/new")
    bad = ui_site["shots"].parent / "broken.yaml"
    bad.write_text("task: [\n")
    page.set_input_files("#config-upload", str(bad))
    page.wait_for_function("document.getElementById('form-message').textContent.includes('not valid YAML')")


@browser_test
def test_a_bad_override_shows_its_error_next_to_the_field(page, ui_site):
    page.goto(ui_site["url"] + "/new")
    page.select_option('[name="config"]', "example:tiny.yaml")
    page.wait_for_function("document.querySelector('[name=\"train.max_steps\"]').placeholder === '4'")
    page.fill('[name="train.learning_rate"]', "-1")
    page.fill('[name="lora.r"]', "many")
    page.fill('[name="extra"]', "train.warmup_ratoi=0.1")
    page.click("#check")
    lr_error = page.locator('.field-error[data-for="train.learning_rate"]')
    lr_error.wait_for(state="visible")
    assert "greater than 0" in lr_error.inner_text()
    assert "valid integer" in page.inner_text('.field-error[data-for="lora.r"]')
    assert "warmup_ratio" in page.inner_text('.field-error[data-for="extra"]')  # did-you-mean for an unknown key
    assert "invalid" in page.get_attribute('[name="train.learning_rate"]', "class")
    shot(page, ui_site, "new-run-errors")
    page.click("#start")  # refused the same way: nothing starts
    page.wait_for_timeout(300)
    assert page.url.endswith("/new")
    assert not any(p.name.startswith("tiny") for p in ui_site["runs"].iterdir())


@browser_test
def test_start_a_training_from_the_form_and_see_it_finish(page, ui_site):
    page.goto(ui_site["url"] + "/new")
    page.select_option('[name="config"]', "example:tiny.yaml")
    page.fill('[name="name"]', "ui-tiny")
    page.fill('[name="train.max_steps"]', "4")
    page.click("#check")
    page.wait_for_function("document.getElementById('estimate').textContent.includes('4 steps')")
    assert "s/step measured by run first" in page.inner_text("#estimate")  # a time estimate from a similar run
    page.click("#start")
    page.wait_for_url("**/runs/ui-tiny", timeout=WAIT_MS)
    shot(page, ui_site, "run-training")
    # the page follows the run live and reloads when it ends
    page.wait_for_function("document.querySelector('.status') && document.querySelector('.status').textContent "
                           "=== 'finished'", timeout=150_000)
    assert int(page.locator("#chart-loss path.series").first.get_attribute("data-points")) >= 4
    page.goto(ui_site["url"] + "/")
    assert page.locator('#runs-table tr[data-name="ui-tiny"] .status').inner_text() == "finished"
    # select two runs and compare them: two loss curves in one chart, metrics side by side
    page.check('input.pick[value="first"]')
    page.check('input.pick[value="ui-tiny"]')
    shot(page, ui_site, "runs", readme=True)
    page.click("#compare")
    page.wait_for_url("**/compare?**")
    page.locator("#chart-compare-loss path.series").nth(1).wait_for()
    assert page.locator("#chart-compare-loss path.series").count() == 2
    assert page.locator("table.compare tr").filter(has_text="train_loss").count() == 1
    shot(page, ui_site, "compare")


@browser_test
def test_chat_streams_the_reply(page, ui_site):
    if not (ui_site["runs"] / "ui-tiny" / "final").exists():
        pytest.skip("needs the run trained from the form (test_start_a_training_from_the_form_and_see_it_finish)")
    page.goto(ui_site["url"] + "/chat")
    page.select_option('[name="target"]', "run:ui-tiny")
    page.fill('[name="max_new_tokens"]', "48")
    page.fill('[name="message"]', "What is LoRA?")
    page.click("#chat-send")
    reply = page.locator(".bubble.assistant").last
    page.wait_for_function("document.querySelector('.bubble.assistant') && "
                           "document.querySelector('.bubble.assistant').dataset.done === 'true'", timeout=60_000)
    assert int(reply.get_attribute("data-chunks")) > 1, "the reply did not arrive in pieces"
    assert len(reply.inner_text().strip()) > 0
    assert page.locator(".bubble.user").inner_text() == "What is LoRA?"
    shot(page, ui_site, "chat")
    answer = page.request.post(ui_site["url"] + "/api/chat", data=json.dumps({"target": "run:nope", "messages": []}),
                               headers={"Content-Type": "application/json", "X-Tunelab-UI": "1"})
    assert answer.status == 400 and "unknown model" in answer.json()["error"]


@browser_test
def test_data_page_stats_report_lengths_and_template(page, ui_site):
    page.goto(ui_site["url"] + "/data?config=example:tiny.yaml&rows=2")
    assert "question" in page.inner_text("table")  # statistics per column
    assert "split:" in page.inner_text("#validation-report")
    assert page.locator("#chart-lengths rect.bar").count() >= 3
    assert page.locator(".tokens .tok.trained").count() > 0  # the tokens the loss falls on, highlighted
    assert page.locator(".tokens .tok.masked").count() > 0
    shot(page, ui_site, "data")
    # a data file uploaded from the page is offered and read with the config's column mapping
    upload = ui_site["shots"].parent / "my-qa.csv"
    upload.write_text("question,answer\n" + "".join(f"What is {i} + {i}?,{2 * i}\n" for i in range(12)) + ",empty\n")
    page.set_input_files("#data-upload", str(upload))
    page.wait_for_function("document.querySelector('[name=data]').value === 'upload:my-qa.csv'")
    page.click('#data-form button[type="submit"]')
    page.wait_for_url("**data=upload%3Amy-qa.csv**")
    assert "13 rows" in page.inner_text("body")
    assert "empty: 1" in page.inner_text("#validation-report")  # the dropped row and why
    page.goto(ui_site["url"] + "/data?config=example:nope.yaml")
    assert "unknown config" in page.inner_text("body")
    no_traceback(page)


# -- without a browser ------------------------------------------------------------------------------------------------
def test_field_errors_key_each_problem_by_its_setting():
    from tunelab import runs

    config, errors = runs.validate_config({"task": "sft"}, {"train.learning_rate": -1, "lora.rr": 3,
                                                              "train.preset": "fastest"})
    assert config is None
    assert "train.preset" in errors and "fast" in errors["train.preset"]
    config, errors = runs.validate_config({"task": "sft"}, {"train.learning_rate": -1, "lora.rr": 3})
    assert "greater than 0" in errors["train.learning_rate"]
    assert "did you mean" in errors["lora.rr"].lower() or "unknown key" in errors["lora.rr"]
    config, errors = runs.validate_config({"task": "sft"}, {"train.report_to": "tensorboard"})
    assert errors == {} and config.train.report_to == "tensorboard"


def test_stop_is_a_clean_interrupt_that_resume_continues(tmp_path, tiny_llama):
    from tunelab import runs
    from tunelab.config import build_config

    root = tmp_path / "runs"
    jobs = runs.Jobs(root)
    config = build_config(tiny_sft_raw(tiny_llama, "unused", max_steps=400, save_steps=200, eval_steps=200))
    runs.start_training(root, jobs, config, "long")
    history = root / "long" / "history.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (history.exists() and '"loss"' in history.read_text()):
        assert jobs.get("long")["alive"], Path(jobs.get("long")["log"]).read_text()[-2000:]
        time.sleep(0.3)
    assert runs.summarize(root, "long", jobs.get("long"))["status"] == "running"
    assert runs.run_status(root / "long")[0] == "running"  # from the run dir alone: training holds its lock
    jobs.stop("long", signal.SIGINT)
    record = jobs.wait("long", 90)
    assert record["returncode"] == 130, Path(record["log"]).read_text()[-2000:]
    status, detail = runs.run_status(root / "long", record)
    assert status == "interrupted" and "--resume" in detail
    assert runs.read_run(root, "long", record)["resumable"]
    steps_before = runs.RunDir(root / "long").last_checkpoint_step()
    assert 0 < steps_before < 400
    # resume with a shorter length so the test stays short: training continues from the checkpoint and finishes
    jobs.start("long", ["train", "--resume", "--output-dir", str(root / "long"), "--max-steps", str(steps_before + 2)])
    record = jobs.wait("long", 120)
    assert record["returncode"] == 0, Path(record["log"]).read_text()[-2000:]
    assert runs.run_status(root / "long", record)[0] == "finished"
    assert f"resuming {root / 'long'} from checkpoint-{steps_before}" in Path(record["log"]).read_text()


def test_report_to_tensorboard_writes_event_files_in_the_run_dir(tmp_path, tiny_llama):
    pytest.importorskip("tensorboard")
    result = _train(tiny_sft_raw(tiny_llama, tmp_path / "tb", max_steps=2, report_to="tensorboard"))
    events = list((result.run_dir / "tensorboard").glob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0


def test_report_to_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, tiny_llama, monkeypatch):
    from tunelab.errors import UserError
    from tunelab.training import arguments

    monkeypatch.setattr(arguments, "_installed", lambda module: False)
    with pytest.raises(UserError, match="needs the `mlflow` package"):
        _train(tiny_sft_raw(tiny_llama, tmp_path / "ml", max_steps=2, report_to="mlflow"))


def _fake_run(folder: Path, task: str, metrics: dict | None = None, final: bool = True, log: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / ".tunelab-run").write_text('{"created": "2026-01-01T10:00:00"}')
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": {"name": task}, "model": {"name_or_path": "m"}}))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if final:
        (folder / "final").mkdir()
        (folder / "final" / "config.json").write_text("{}")
    if log:
        (folder / "train.log").write_text(log)
    return folder


def _fake_checkpoint(run: Path, step: int) -> None:
    folder = run / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "adapter_model.safetensors").write_bytes(b"x")


def test_run_pages_read_status_confusion_matrix_and_rouge_from_the_run_dir(tmp_path):
    from tunelab import runs

    run = _fake_run(tmp_path / "b77", "classify", {"train_steps": 3, "eval_accuracy": 0.75, "eval_loss": 0.5})
    rows = [("a", "a"), ("a", "b"), ("b", "b"), ("c", "c")]
    (run / "eval_predictions.jsonl").write_text("".join(json.dumps({"row": i, "label": t, "prediction": p}) + "\n"
                                                         for i, (t, p) in enumerate(rows)))
    page = runs.read_run(tmp_path, "b77")
    assert page["status"] == "finished" and page["exportable"] and not page["resumable"]
    confusion = page["confusion"]
    assert confusion["labels"] == ["a", "b", "c"]
    assert confusion["matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert page["metrics"] == {"eval_loss": 0.5, "eval_accuracy": 0.75}

    _fake_run(tmp_path / "sum", "summarize", {"train_steps": 2, "rougeL": 0.31, "rouge1": 0.4})
    assert runs.read_run(tmp_path, "sum")["rouge"] == {"rougeL": 0.31, "rouge1": 0.4}

    killed = _fake_run(tmp_path / "killed", "sft", final=False)
    _fake_checkpoint(killed, 4)
    assert runs.run_status(killed)[0] == "interrupted" and runs.read_run(tmp_path, "killed")["resumable"]
    crashed = _fake_run(tmp_path / "crashed", "sft", final=False, log="step 1\nstopped: disk full while writing x\n")
    _fake_checkpoint(crashed, 2)
    assert runs.run_status(crashed) == ("failed", "disk full while writing x")
    early = _fake_run(tmp_path / "early", "sft", final=False)
    assert runs.run_status(early)[0] == "failed"
    (tmp_path / "notes").mkdir()
    (tmp_path / "sweep" / "trial-000").mkdir(parents=True)
    _fake_run(tmp_path / "sweep" / "trial-001", "sft", {"train_steps": 1})
    listed = {r["name"]: r["status"] for r in runs.list_runs(tmp_path)}
    assert listed == {"b77": "finished", "sum": "finished", "killed": "interrupted", "crashed": "failed",
                      "early": "failed", "sweep/trial-001": "finished"}
    from tunelab.errors import UserError

    for bad in ("nope", "../etc", "notes", ".tunelab-ui"):
        with pytest.raises(UserError):
            runs.read_run(tmp_path, bad)
    # the pages render them: a classifier's confusion matrix, a summarizer's ROUGE, a sweep trial's own address
    import urllib.request

    from tunelab.ui.app import background

    with background(tmp_path) as url:
        def get(path):
            with urllib.request.urlopen(url + path, timeout=30) as response:
                return response.status, response.read().decode()

        status, text = get("/runs/b77")
        assert status == 200 and 'id="confusion"' in text and text.count("class=diag") == 3
        status, text = get("/runs/sum")
        assert status == 200 and "<h2>ROUGE</h2>" in text and "rougeL" in text
        status, text = get("/runs/sweep/trial-001")
        assert status == 200 and "finished" in text
        status, text = get("/compare?run=b77&run=sum")
        assert status == 200 and "eval_accuracy" in text
