"""`tunelab serve`: a real server on a free loopback port, called with the official `openai` client.

Generation tests use the packaged SmolLM2 (greedy, a few tokens each); the classify test a tiny BERT trained for
one step. Every server is shut down by its fixture's finalizer."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

openai = pytest.importorskip("openai")

MODEL = "smollm2-135m-instruct"
KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm_run():
    import tunelab.api as api

    return api.load_base(MODEL)


@pytest.fixture(scope="module")
def server(smollm_run):
    from tunelab.serve.app import BackgroundServer, create_app

    app = create_app(smollm_run, MODEL, api_key=KEY, gather_ms=20)
    running = BackgroundServer(app).start()
    running.scheduler = app.state.server.scheduler
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def _raw(url: str, method: str = "GET", body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one plain HTTP request."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _greedy(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, **kwargs)


@pytest.mark.e2e
def test_models_and_a_chat_completion_with_usage(client, smollm_run):
    assert [m.id for m in client.models.list().data] == [MODEL]
    reply = _greedy(client, max_tokens=8)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length") and reply.model == MODEL
    prompt = smollm_run.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(smollm_run.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.e2e
def test_streamed_chunks_join_to_the_greedy_text_and_end_with_usage(client):
    whole = _greedy(client, max_tokens=12)
    chunks = list(_greedy(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.e2e
def test_completion_stop_strings_and_seeded_sampling(client):
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    text = reply.choices[0].text
    assert "Paris" in text and reply.usage.prompt_tokens == 5 and reply.usage.completion_tokens == 6
    assert reply.choices[0].finish_reason == "length"
    # The reply ends before its stop string, which is not sent.
    stop = text.strip().split()[1]
    cut = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                    stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=1.0,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.e2e
def test_eight_concurrent_requests_are_all_answered_in_shared_batches(client, server):
    batches_before = server.scheduler.batches

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": f"Name a color number {i}."}]
        return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    assert all(r.choices[0].message.content and r.usage.completion_tokens >= 1 for r in replies)
    assert server.scheduler.batches - batches_before < 8  # requests shared batches


@pytest.mark.e2e
@pytest.mark.parametrize("change, status, param", [
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"messages": []}, 400, "messages"),
    ({"temperature": 5}, 400, "temperature"),
    ({"model": "no-such-model"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "hello " * 8300}]}, 400, "messages"),  # over the 8192-token context
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, server, change, status, param):
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 2} | change
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**kwargs)
    assert caught.value.status_code == status
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]
    assert _raw(f"{server.url}/health")[1]["status"] == "ok"
    assert _greedy(client, max_tokens=2).choices[0].message.content


@pytest.mark.e2e
def test_wrong_key_malformed_json_and_classify_on_a_generator(server, client):
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    assert _raw(f"{server.url}/v1/models", key=None)[0] == 401
    status, body, _ = _raw(f"{server.url}/v1/chat/completions", "POST", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body, _ = _raw(f"{server.url}/v1/classify", "POST", json.dumps({"input": "hello"}).encode())
    assert status == 400 and "generates text" in body["error"]["message"]
    assert _raw(f"{server.url}/v1/nothing-here")[0] == 404
    assert _raw(f"{server.url}/health", key=None)[:2] == (200, {"status": "ok", "model": MODEL, "task": "sft",
                                                               "waiting": 0, "running": 0})
    assert _greedy(client, max_tokens=2).choices[0].message.content


@pytest.mark.e2e
def test_a_full_queue_answers_503_with_retry_after(smollm_run):
    """One request generating (held at a gate), one waiting (max_queue 1): the next is refused, not queued."""
    from tunelab.api import generation_scheduler
    from tunelab.serve.app import BackgroundServer, create_app

    gate, generating = threading.Event(), threading.Event()
    scheduler = generation_scheduler(smollm_run, max_batch=1, gather_ms=0, max_queue=1)
    run_batch = scheduler._run_batch

    def held_at_the_gate(batch):
        generating.set()
        gate.wait(60)
        run_batch(batch)

    scheduler._run_batch = held_at_the_gate
    running = BackgroundServer(create_app(smollm_run, MODEL, scheduler=scheduler)).start()
    try:
        body = json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 2}).encode()
        url = f"{running.url}/v1/chat/completions"
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_raw, url, "POST", body)
            assert generating.wait(60)  # the worker took the first request and holds it at the gate
            second = pool.submit(_raw, url, "POST", body)
            _wait_for(lambda: scheduler.waiting == 1)
            status, error, headers = _raw(url, "POST", body)
            assert status == 503 and headers.get("retry-after") == "1", (status, error)
            assert error["error"]["type"] == "server_error"
            gate.set()
            assert first.result(timeout=120)[0] == 200 and second.result(timeout=120)[0] == 200
        assert _raw(url, "POST", body)[0] == 200
    finally:
        gate.set()
        running.stop()


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def tiny_classify_run(tiny_bert, tmp_path_factory):
    """A classify run on a tiny random BERT with MiniLM's tokenizer (conftest `tiny_bert`), one step (seconds)."""
    import tunelab
    from tunelab.config import build_config

    folder = tiny_bert
    config = build_config({
        "task": {"name": "classify", "baseline": False, "calibrate": False, "top_k": 2},
        "model": {"name_or_path": str(folder)},
        "data": {"train_path": str(folder / "train.csv"), "eval_fraction": 0.0},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "max_steps": 1, "batch_size": 8, "max_length": 16,
                  "output_dir": str(tmp_path_factory.mktemp("serve-classify") / "run"), "estimate_steps": 0},
    })
    return tunelab.train(config, echo=lambda *_: None).run_dir


def test_a_classify_run_answers_classify_with_the_probabilities_of_predict(tiny_classify_run, cli, tmp_path):
    import tunelab
    from tunelab.serve.app import BackgroundServer, create_app

    texts = ["goal team", "rain wind", "rice soup cake"]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "test.csv", index=False)
    code, output, _ = cli("predict", tiny_classify_run, "--data", tmp_path / "test.csv", "--output", tmp_path / "p.csv")
    assert code == 0, output
    predicted = pd.read_csv(tmp_path / "p.csv")
    running = BackgroundServer(create_app(tunelab.load(tiny_classify_run), "tiny")).start()
    try:
        status, body, _ = _raw(f"{running.url}/v1/classify", "POST", json.dumps({"input": texts}).encode())
        assert status == 200, body
        for row, answer in zip(predicted.to_dict("records"), body["data"]):
            assert answer["label"] == row["prediction"] and len(answer["top_k"]) == 2
            for label, probability in answer["probabilities"].items():
                assert probability == pytest.approx(row[f"prob:{label}"], abs=1e-6)
        assert sum(body["data"][0]["probabilities"].values()) == pytest.approx(1.0)
        status, body, _ = _raw(f"{running.url}/v1/classify", "POST", json.dumps({"input": [{"txt": "x"}]}).encode())
        assert status == 400 and "text" in body["error"]["message"]
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="tiny", messages=QUESTION)
        assert "/v1/classify" in caught.value.body["message"]
        assert _raw(f"{running.url}/health")[1]["task"] == "classify"
    finally:
        running.stop()


def test_serve_refuses_a_busy_port_in_one_line_before_loading(cli):
    from tunelab.serve.app import bind_socket

    taken = bind_socket("127.0.0.1", 0)
    try:
        code, output, _ = cli("serve", MODEL, "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert code == 2 and output.strip().startswith("error: cannot listen on 127.0.0.1:"), output
    assert len(output.strip().splitlines()) == 1
