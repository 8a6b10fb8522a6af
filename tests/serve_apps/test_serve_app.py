"""The VLM-3R service on a real local Ray Serve instance (loopback HTTP), asked with the openai client.

One application is started for the whole module with a tiny model saved by ``save_pretrained`` (8
frames per video to keep CPU time down), as ``make demo`` serves the model the training job wrote.
"""

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from vlm3r_core import storage
from vlm3r_core.presets import get_preset
from vlm3r_core.video import write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

API_KEY = "test-key-123"
APP = "vlm3r"


@dataclass
class Service:
    base_url: str
    model_dir: str
    bucket: str
    videos: Path

    def client(self, api_key: str = API_KEY):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def encoder(self):
        from ray import serve

        return serve.get_deployment_handle("GeometryEncoder", app_name=APP)

    def stats(self):
        return self.encoder().stats.remote().result(timeout_s=30)


def _write_scene_video(path: Path, num_frames: int, fps: float, seed: int) -> bytes:
    """A small synthetic scene: a box moving across a gradient floor (64 x 80 px)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, 80, dtype=np.float32)[None, :, None] * np.ones((64, 80, 3), np.float32)
    base = base * rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    frames = np.repeat(base[None], num_frames, axis=0)
    for t in range(num_frames):
        x = int(5 + 50 * t / max(num_frames - 1, 1))
        frames[t, 20:40, x : x + 20] = rng.integers(0, 255, size=3)
    write_video(str(path), frames.astype(np.uint8), fps=fps)
    return path.read_bytes()


def _data_url(video: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(video).decode()


def _messages(question: str, video_url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": video_url}},
                {"type": "text", "text": question},
            ],
        }
    ]


@pytest.fixture(scope="module")
def service(serve_port, moto_endpoint, tmp_path_factory):
    import boto3
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import Vlm3rArgs

    root = tmp_path_factory.mktemp("serve")
    model_dir = str(root / "model")
    config = get_preset("tiny", num_frames=8)
    Vlm3rForConditionalGeneration.from_config(config).save_pretrained(
        model_dir, Vlm3rProcessor.from_config(config)
    )
    bucket = f"serve-{int(time.time() * 1000) % 10**9}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    args = Vlm3rArgs(
        model=model_dir,
        api_keys=(API_KEY,),
        allowed_uri_prefixes=(f"s3://{bucket}/videos/",),
        max_body_bytes=2**20,
        max_video_frames=40,
        max_video_duration_s=10.0,
        default_max_tokens=6,
        max_tokens_limit=32,
        request_timeout_s=90.0,
    )
    port = serve_port()
    serve.run(build_app(args), name=APP, route_prefix="/")
    videos = root / "videos"
    videos.mkdir()
    yield Service(base_url=f"http://127.0.0.1:{port}", model_dir=model_dir, bucket=bucket, videos=videos)
    serve.delete(APP)


@pytest.fixture(scope="module")
def scene_video(service) -> bytes:
    return _write_scene_video(service.videos / "scene.mp4", num_frames=24, fps=8, seed=0)


def _local_answer(model_dir: str, video: bytes, question: str, max_new_tokens: int) -> str:
    """The answer computed in-process with the library (same sampler, prompt builder, processor)."""
    from vlm3r_core.prompting import build_user_message
    from vlm3r_core.video import read_video

    model = Vlm3rForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = Vlm3rProcessor.from_pretrained(model_dir)
    decoded = read_video(video, model.config.num_frames)
    features = model.encode_frames(processor.preprocess_frames([decoded.frames]))
    message = build_user_message(
        question, timestamps=decoded.timestamps, duration_s=decoded.duration_s, config=model.config.prompt
    )
    batch = processor.build_batch([message])
    ids = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        features=features,
        max_new_tokens=max_new_tokens,
        vocab_size=processor.vocab_size,  # generation never picks the LM head's padding rows
    )
    return processor.batch_decode(ids)[0]


def test_openai_client_gets_the_library_answer(service, scene_video):
    question = "How many chairs are in this room?"
    response = service.client().chat.completions.create(
        model="vlm3r", messages=_messages(question, _data_url(scene_video)), max_tokens=6
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert (
        0 < response.usage.completion_tokens <= 6 and response.usage.prompt_tokens > 8 * 20
    )  # 8 frames x 20 video tokens
    assert choice.message.content == _local_answer(service.model_dir, scene_video, question, 6)


def test_streaming_matches_the_whole_answer(service, scene_video):
    client = service.client()
    messages = _messages("What is the size of this room (in square meters)?", _data_url(scene_video))
    whole = client.chat.completions.create(model="vlm3r", messages=messages, max_tokens=8)
    chunks = list(
        client.chat.completions.create(
            model="vlm3r",
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_models_and_health(service):
    assert [m.id for m in service.client().models.list()] == ["vlm3r"]
    assert requests.get(f"{service.base_url}/health", timeout=10).json() == {"status": "ok"}


def test_video_from_an_allowed_s3_prefix(service):
    video = _write_scene_video(service.videos / "s3.mp4", num_frames=16, fps=8, seed=3)
    uri = f"s3://{service.bucket}/videos/s3.mp4"
    storage.write_bytes(uri, video)
    response = service.client().chat.completions.create(
        model="vlm3r", messages=_messages("How far is the door?", uri)
    )
    assert response.choices[0].finish_reason in ("stop", "length")


def test_repeated_questions_reuse_the_encoded_video(service):
    video = _write_scene_video(service.videos / "cache.mp4", num_frames=16, fps=8, seed=1)
    client, before = service.client(), service.stats()
    client.chat.completions.create(model="vlm3r", messages=_messages("How many tables?", _data_url(video)))
    after_first = service.stats()
    client.chat.completions.create(model="vlm3r", messages=_messages("How many beds?", _data_url(video)))
    after_second = service.stats()
    assert after_first.videos_encoded == before.videos_encoded + 1
    assert after_second.videos_encoded == after_first.videos_encoded  # no second encoder run
    assert after_second.cache_hits == after_first.cache_hits + 1


def test_api_key_is_enforced_before_any_model_work(service):
    from openai import AuthenticationError

    video = _write_scene_video(service.videos / "auth.mp4", num_frames=16, fps=8, seed=2)
    before = service.stats()
    messages = _messages("How many?", _data_url(video))
    with pytest.raises(AuthenticationError) as info:
        service.client(api_key="wrong-key").chat.completions.create(model="vlm3r", messages=messages)
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": API_KEY}):
        r = requests.post(
            f"{service.base_url}/v1/chat/completions",
            json={"model": "vlm3r", "messages": messages},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    assert requests.get(f"{service.base_url}/v1/models", timeout=30).status_code == 401
    after = service.stats()
    assert (after.videos_encoded, after.cache_hits) == (before.videos_encoded, before.cache_hits)


def _bad_requests(service: Service) -> list[tuple[str, bytes, int, str, str]]:
    """(case, body, status, code, words in the message)."""
    ok = _write_scene_video(service.videos / "ok.mp4", num_frames=12, fps=8, seed=4)
    many_frames = _write_scene_video(service.videos / "many.mp4", num_frames=48, fps=24, seed=5)
    too_long = _write_scene_video(service.videos / "long.mp4", num_frames=12, fps=1, seed=6)

    def chat(content=None, url=None, question="How many chairs?", **extra) -> bytes:
        content = content if content is not None else _messages(question, url)[0]["content"]
        return json.dumps(
            {"model": "vlm3r", "messages": [{"role": "user", "content": content}], **extra}
        ).encode()

    return [
        ("bad json", b'{"model": "vlm3r", "messages": [', 400, "invalid_json", "not valid JSON"),
        ("missing messages", b'{"model": "vlm3r"}', 400, "missing_field", "messages: field required"),
        (
            "missing model",
            json.dumps({"messages": []}).encode(),
            400,
            "missing_field",
            "model: field required",
        ),
        ("no video", chat(content="How many chairs?"), 400, "missing_video", "video_url"),
        (
            "no question",
            chat(content=[{"type": "video_url", "video_url": {"url": _data_url(ok)}}]),
            400,
            "missing_question",
            "question",
        ),
        (
            "image part",
            chat(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
            415,
            "unsupported_media_type",
            "image_url",
        ),
        (
            "image data url",
            chat(url="data:image/png;base64,iVBORw0KGgo="),
            415,
            "unsupported_media_type",
            "image/png",
        ),
        (
            "not a video container",
            chat(url=_data_url(b"\x00\x01not a video" * 50)),
            415,
            "unsupported_media_type",
            "video_url.url:",
        ),
        (
            "undecodable video",
            chat(url=_data_url(ok[: len(ok) // 2])),
            422,
            "undecodable_video",
            "video_url.url:",
        ),
        (
            "undecodable video, streaming",
            chat(url=_data_url(ok[: len(ok) // 2]), stream=True),
            422,
            "undecodable_video",
            "video_url.url:",
        ),
        (
            "uri outside prefixes",
            chat(url="s3://someone-else/videos/a.mp4"),
            403,
            "uri_not_allowed",
            "outside the allowed prefixes",
        ),
        (
            "uri escaping prefix",
            chat(url=f"s3://{service.bucket}/videos/../secret.mp4"),
            403,
            "uri_not_allowed",
            "outside the allowed prefixes",
        ),
        (
            "missing object",
            chat(url=f"s3://{service.bucket}/videos/none.mp4"),
            400,
            "video_not_found",
            "no video at",
        ),
        ("body too large", chat(url=_data_url(b"\x00" * (2**20))), 413, "body_too_large", "limit of 1048576"),
        (
            "too many frames",
            chat(url=_data_url(many_frames)),
            413,
            "video_too_long",
            "more than the limit of 40",
        ),
        ("too long", chat(url=_data_url(too_long)), 413, "video_too_long", "limit of 10.0 s"),
        (
            "unknown model",
            chat(url=_data_url(ok)).replace(b'"vlm3r"', b'"gpt-4o"', 1),
            404,
            "model_not_found",
            "gpt-4o",
        ),
        ("max tokens", chat(url=_data_url(ok), max_tokens=1000), 400, "invalid_value", "limit of 32"),
        ("n > 1", chat(url=_data_url(ok), n=3), 400, "invalid_value", "n=1"),
    ]


def test_bad_requests_get_openai_errors_and_leave_replicas_running(service):
    before = service.stats()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    failures = []
    for case, body, status, code, words in _bad_requests(service):
        r = requests.post(f"{service.base_url}/v1/chat/completions", data=body, headers=headers, timeout=60)
        error = (
            r.json().get("error", {})
            if r.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if r.status_code != status or error.get("code") != code or words not in error.get("message", ""):
            failures.append(f"{case}: got {r.status_code} {r.text[:300]}")
        assert set(error) <= {"message", "type", "param", "code"}
    assert not failures, "\n".join(failures)
    unknown = requests.get(f"{service.base_url}/v2/nothing", headers=headers, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    after = service.stats()
    assert (after.replica_actor, after.pid) == (before.replica_actor, before.pid)  # no replica crashed
    ok = service.client().chat.completions.create(
        model="vlm3r",
        messages=_messages(
            "How many?", _data_url(_write_scene_video(service.videos / "after.mp4", 12, 8, 7))
        ),
    )
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_request_timeout_gives_504(service, scene_video):
    """A second ingress with a 1 ms timeout, composed with the running model deployments."""
    from ray import serve

    from serve_apps.api import Vlm3rIngress
    from serve_apps.args import Vlm3rArgs

    args = Vlm3rArgs(request_timeout_s=0.001)
    encoder = serve.get_deployment_handle("GeometryEncoder", app_name=APP)
    language_model = serve.get_deployment_handle("LanguageModel", app_name=APP)
    serve.run(Vlm3rIngress.bind(args, encoder, language_model), name="impatient", route_prefix="/impatient")
    try:
        body = {"model": "vlm3r", "messages": _messages("How many chairs?", _data_url(scene_video))}
        for stream in (False, True):
            r = requests.post(
                f"{service.base_url}/impatient/v1/chat/completions",
                json={**body, "stream": stream},
                timeout=60,
            )
            assert r.status_code == 504, r.text
            assert (
                r.json()["error"]["type"] == "timeout_error"
                and "request timeout" in r.json()["error"]["message"]
            )
    finally:
        serve.delete("impatient")
    answer = service.client().chat.completions.create(
        model="vlm3r", messages=body["messages"]
    )  # the models still answer
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_killed_replica_is_replaced(service, scene_video):
    import ray

    victim = service.stats()
    ray.kill(ray.get_actor(victim.replica_actor, namespace="serve"), no_restart=True)
    client = service.client()
    deadline, answered, errors = time.monotonic() + 90, False, []
    while time.monotonic() < deadline and not answered:
        try:
            client.chat.completions.create(
                model="vlm3r", messages=_messages("How many chairs?", _data_url(scene_video))
            )
            answered = True
        except Exception as e:  # 503/500 while Serve replaces the replica
            errors.append(repr(e)[:200])
            time.sleep(1.0)
    assert answered, f"no answer within 90 s after the kill: {errors[-3:]}"
    assert service.stats().pid != victim.pid
