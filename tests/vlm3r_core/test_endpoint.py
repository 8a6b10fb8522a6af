"""Evaluating an OpenAI-compatible endpoint: a real HTTP server on loopback (stdlib), the real openai client.

The server records every request and answers from a script, so the tests see exactly what is sent (frames
as JPEG parts, the official prompt, the model name, greedy settings, the API key) and how failures are
retried (503 with backoff) or not (422).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from jobs.evaluate import main, parse_args
from serve_apps.ports import free_loopback_port
from vlm3r_core import storage
from vlm3r_core.endpoint import EndpointAnswerer, EndpointConfig, parse_endpoint
from vlm3r_core.evaluation import read_benchmark
from vlm3r_core.prompting import format_question
from vlm3r_core.video import write_video


class FakeEndpoint:
    """A chat-completions server; ``reply(body, n)`` -> (status, answer or error message) per request."""

    def __init__(self):
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.lock = threading.Lock()
        self.reply = lambda body, n: (200, " B.")
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status, text = endpoint.reply(body, len(endpoint.requests))
                if status == 200:
                    payload = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip
                else:
                    payload = {"error": {"message": text, "type": "x", "param": None, "code": "busy" if status == 503 else "bad"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_loopback_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    server = FakeEndpoint()
    yield server
    server.close()


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    video = str(root / "syn-0.mp4")
    write_video(video, np.random.default_rng(0).integers(0, 255, (40, 48, 64, 3), dtype=np.uint8), fps=10)
    common = {"dataset": "synthetic", "scene_name": "syn-0", "video": video}
    rows = [
        {"id": "q0", "question_type": "object_rel_distance", "question": "Which is closest to the bed?",
         "options": ["A. chair", "B. lamp"], "ground_truth": "lamp", "mc_answer": "B", **common},
        {"id": "q1", "question_type": "object_counting", "question": "How many chair(s) are in this room?",
         "options": [], "ground_truth": "2", "mc_answer": None, **common},
    ]  # fmt: skip
    uri = str(root / "bench.jsonl")
    storage.write_jsonl(uri, rows)
    return uri


def test_the_model_spec_names_url_and_model():
    assert parse_endpoint("openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct") == (
        "http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct")
    for bad in ("openai:http://host/v1", "openai:#m", "http://host/v1#m"):
        with pytest.raises(ValueError, match="openai:<base_url>#<model_name>"):
            parse_endpoint(bad)
    assert main(["--model", "openai:127.0.0.1:8000#m", "--benchmark", "b", "--out", "o"]) == 1  # before any work
    with pytest.raises(ValueError, match="--tokens and --dtype apply to our own models, not to an openai: endpoint"):
        parse_args(["--model", "openai:http://h/v1#m", "--benchmark", "b", "--out", "o", "--dtype", "float16"])


def test_frames_and_the_official_prompt_reach_the_endpoint_and_the_run_resumes(endpoint, benchmark, tmp_path,
                                                                               monkeypatch, capsys):  # fmt: skip
    monkeypatch.setenv("FAKE_API_KEY", "secret-1")
    out = str(tmp_path / "eval")
    argv = ["--model", f"openai:{endpoint.url}#fake-vlm", "--benchmark", benchmark, "--out", out,
            "--endpoint-frames", "4", "--endpoint-api-key-env", "FAKE_API_KEY"]  # fmt: skip
    assert main(argv) == 0
    assert len(endpoint.requests) == 2
    rows = {r.id: r for r in read_benchmark(benchmark)}
    for headers, body in endpoint.requests:
        assert headers["authorization"] == "Bearer secret-1"
        assert (body["model"], body["max_tokens"], body["temperature"]) == ("fake-vlm", 16, 0)
        (message,) = body["messages"]
        *images, text = message["content"]
        assert len(images) == 4 and all(p["type"] == "image_url" for p in images)
        jpeg = base64.b64decode(images[0]["image_url"]["url"].split(",", 1)[1])
        assert Image.open(io.BytesIO(jpeg)).size == (64, 48)
        assert text["text"] in {format_question(r.question, r.options) for r in rows.values()}
    predictions = {p["id"]: p for p in storage.read_jsonl(out + "/predictions.jsonl")}
    assert predictions["q0"]["prediction"] == " B." and predictions["q0"]["score_official"] == 1.0  # stripped
    assert predictions["q1"]["score_official"] == 0.0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["run"]["answerer"] == f"openai:{endpoint.url}#fake-vlm [frames x4]"
    assert "chance_levels" in summary and (tmp_path / "eval" / "plots" / "overview_vsibench.png").exists()
    capsys.readouterr()
    assert main(argv) == 0  # resumes: everything was answered, nothing is asked again
    assert len(endpoint.requests) == 2
    assert "0 done, 2 already done" in capsys.readouterr().out


def test_transient_failures_are_retried_with_backoff_and_others_fail_the_question_at_once(endpoint, benchmark):
    def reply(body, n):
        if "How many" in body["messages"][0]["content"][-1]["text"]:
            return 422, "cannot read this"
        return (503, "overloaded") if n <= 3 else (200, "B")

    endpoint.reply = reply
    config = EndpointConfig(input="frames", num_frames=2, concurrency=1, retries=3, backoff_s=0.01)
    answerer = EndpointAnswerer(f"openai:{endpoint.url}#m", config)
    results = {r["id"]: r for r in answerer(read_benchmark(benchmark))}
    assert results["q0"]["prediction"] == "B" and results["q0"]["error"] is None
    assert results["q1"]["prediction"] is None
    assert results["q1"]["error"] == f"{endpoint.url}: HTTP 422 (bad): cannot read this"
    texts = [b["messages"][0]["content"][-1]["text"] for _, b in endpoint.requests]
    assert sum("How many" in t for t in texts) == 1  # a 422 is not retried
    assert sum("closest" in t for t in texts) >= 2  # the 503s were

    endpoint.requests.clear()
    endpoint.reply = lambda body, n: (503, "still overloaded")
    gave_up = next(iter(EndpointAnswerer(f"openai:{endpoint.url}#m", config)(read_benchmark(benchmark)[:1])))
    assert gave_up["error"].endswith("HTTP 503 (busy): still overloaded (gave up after 3 retries)")
    assert len(endpoint.requests) == 4


def test_a_blind_run_sends_only_the_question(endpoint, benchmark):
    config = EndpointConfig(prompt="question")
    answers = list(EndpointAnswerer(f"openai:{endpoint.url}#m", config, blind=True)(read_benchmark(benchmark)))
    assert [a["error"] for a in answers] == [None, None]
    contents = sorted((b["messages"][0]["content"] for _, b in endpoint.requests), key=str)
    assert contents == [
        [{"type": "text", "text": "How many chair(s) are in this room?"}],
        [{"type": "text", "text": "Which is closest to the bed?\nOptions:\nA. chair\nB. lamp"}],
    ]
