"""Request parsing, errors, auth, the token cache and the checked-in configs, without Ray running."""

import base64
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml

from serve_apps.app import build_app
from serve_apps.args import Vlm3rArgs
from serve_apps.deployments import TokenCache
from serve_apps.openai_protocol import (
    ApiError,
    authorize,
    check_uri_allowed,
    decode_data_url,
    extract_query,
    parse_chat_request,
    requested_max_tokens,
    split_options,
)

ROOT = Path(__file__).resolve().parents[2]


def _chat(content, **extra) -> bytes:
    import json

    return json.dumps(
        {"model": "vlm3r", "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


def _video_part(url="data:video/mp4;base64," + base64.b64encode(b"fake mp4").decode()):
    return {"type": "video_url", "video_url": {"url": url}}


def _error(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def test_parse_request_reports_bad_json_and_missing_fields():
    e = _error(parse_chat_request, b'{"model": ')
    assert (e.status, e.code) == (400, "invalid_json") and "not valid JSON" in e.message
    e = _error(parse_chat_request, b"[1, 2]")
    assert (e.status, e.code) == (400, "invalid_json")
    e = _error(parse_chat_request, b'{"model": "vlm3r"}')
    assert (e.status, e.code, e.param) == (400, "missing_field", "messages")
    e = _error(parse_chat_request, b'{"messages": [{"role": "user", "content": "hi"}]}')
    assert (e.status, e.code, e.param) == (400, "missing_field", "model")
    e = _error(parse_chat_request, _chat([{"type": "video_url", "video_url": {}}]))
    assert (e.code, e.param) == ("missing_field", "messages[0].content[0].video_url.url")
    e = _error(parse_chat_request, _chat([_video_part()], max_tokens=0))
    assert (e.code, e.param) == ("invalid_value", "max_tokens")


def test_extract_query_splits_question_options_and_video():
    chat = parse_chat_request(
        _chat([{"type": "text", "text": "Which is closer?\nOptions:\nA. chair\nB. table"}, _video_part()])
    )
    query = extract_query(chat)
    assert query.question == "Which is closer?"
    assert query.options == ("A. chair", "B. table")
    assert query.video.data == b"fake mp4" and query.video.param == "messages[0].content[1].video_url.url"
    uri_query = extract_query(
        parse_chat_request(_chat([_video_part("s3://b/v.mp4"), {"type": "text", "text": "How big?"}]))
    )
    assert (uri_query.video.uri, uri_query.question, uri_query.options) == ("s3://b/v.mp4", "How big?", ())


@pytest.mark.parametrize(
    "content, extra, status, code",
    [
        ("How many chairs?", {}, 400, "missing_video"),
        ([_video_part()], {}, 400, "missing_question"),
        ([{"type": "text", "text": "q"}, _video_part(), _video_part()], {}, 400, "missing_video"),
        (
            [
                {"type": "text", "text": "q"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
            ],
            {},
            415,
            "unsupported_media_type",
        ),
        (
            [{"type": "text", "text": "q"}, _video_part("data:image/png;base64,AAAA")],
            {},
            415,
            "unsupported_media_type",
        ),
        (
            [{"type": "text", "text": "q"}, _video_part("data:video/mp4;base64,@@notbase64@@")],
            {},
            400,
            "invalid_data_url",
        ),
        (
            [{"type": "text", "text": "q"}, _video_part("data:video/mp4,rawbytes")],
            {},
            400,
            "invalid_data_url",
        ),
    ],
)
def test_extract_query_rejects_bad_content(content, extra, status, code):
    e = _error(extract_query, parse_chat_request(_chat(content, **extra)))
    assert (e.status, e.code) == (status, code)
    assert e.message.startswith("messages[0]")


def test_only_one_user_message_is_accepted():
    import json

    body = json.dumps(
        {
            "model": "vlm3r",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [_video_part()]},
            ],
        }
    ).encode()
    e = _error(extract_query, parse_chat_request(body))
    assert (e.status, e.code, e.param) == (400, "unsupported_role", "messages[0].role")


def test_data_url_media_types():
    assert decode_data_url("data:video/webm;base64," + base64.b64encode(b"x").decode(), "p") == b"x"
    assert _error(decode_data_url, "data:;base64,eA==", "p").status == 415  # text/plain by default
    assert _error(decode_data_url, "data:video/mp4;base64,", "p").code == "invalid_data_url"


def test_uri_allow_list():
    allowed = ("s3://bucket/videos/",)
    check_uri_allowed("s3://bucket/videos/a/b.mp4", allowed, "p")
    for uri in (
        "s3://bucket/other/b.mp4",
        "s3://bucket/videos-evil/b.mp4",
        "s3://bucket/videos/../secret.mp4",
        "/etc/passwd",
        "s3://bucket/videos/a.mp4::http://169.254.169.254/",  # fsspec chaining
        "simplecache::s3://bucket/videos/a.mp4",
        "s3://bucket/videos/a.mp4\n",
        "s3://bucket/videos\\..\\b.mp4",
    ):
        e = _error(check_uri_allowed, uri, allowed, "p")
        assert (e.status, e.code, e.param) == (403, "uri_not_allowed", "p") and repr(uri)[1:-1] in e.message
    e = _error(check_uri_allowed, "s3://bucket/videos/a.mp4", (), "p")
    assert e.status == 403 and "base64 data URL" in e.message


def test_authorize_bearer_tokens():
    authorize(None, frozenset())  # no keys configured: open
    authorize("Bearer k1", frozenset({"k1", "k2"}))
    for header in (None, "k1", "Bearer ", "Basic k1", "Bearer wrong"):
        e = _error(authorize, header, frozenset({"k1"}))
        assert (e.status, e.type, e.code) == (401, "authentication_error", "invalid_api_key")


def test_max_tokens_default_and_limit():
    chat = parse_chat_request(_chat([_video_part()]))
    assert requested_max_tokens(chat, 16, 64) == 16
    assert (
        requested_max_tokens(parse_chat_request(_chat([_video_part()], max_completion_tokens=40)), 16, 64)
        == 40
    )
    e = _error(requested_max_tokens, parse_chat_request(_chat([_video_part()], max_tokens=65)), 16, 64)
    assert (e.status, e.param) == (400, "max_tokens") and "limit of 64" in e.message
    assert _error(requested_max_tokens, parse_chat_request(_chat([_video_part()], n=2)), 16, 64).param == "n"


def test_error_body_is_openai_format():
    import json

    response = ApiError(413, "too big", "body_too_large").response()
    assert response.status_code == 413
    assert json.loads(response.body) == {
        "error": {
            "message": "too big",
            "type": "invalid_request_error",
            "param": None,
            "code": "body_too_large",
        }
    }


def test_split_options_keeps_plain_questions():
    assert split_options("How far is it?") == ("How far is it?", ())
    assert split_options("Pick one\nOptions:\nnot lettered") == ("Pick one\nOptions:\nnot lettered", ())


def test_token_cache_is_bounded_lru():
    cache = TokenCache(2)
    cache.put("a", "A")
    cache.put("b", "B")
    assert cache.get("a") == "A"  # "a" is now the most recent
    cache.put("c", "C")
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    assert len(cache) == 2
    off = TokenCache(0)
    off.put("a", "A")
    assert off.get("a") is None


def test_args_validation():
    with pytest.raises(pydantic.ValidationError, match="default_max_tokens"):
        Vlm3rArgs(default_max_tokens=100, max_tokens_limit=10)
    with pytest.raises(pydantic.ValidationError, match="allowed_uri_prefixes"):
        Vlm3rArgs(allowed_uri_prefixes=("videos/",))
    with pytest.raises(pydantic.ValidationError):
        Vlm3rArgs(modle="tiny")  # typos are errors, not silently ignored


def test_app_graph_and_lazy_package():
    from ray.serve._private.utils import import_attr

    app = import_attr("serve_apps:vlm3r")
    ingress = app._bound_deployment
    names = {ingress.name, *(child._bound_deployment.name for child in ingress.init_args[1:])}
    assert names == {"Vlm3rIngress", "GeometryEncoder", "LanguageModel"}
    # `serve run serve_apps.app:build_app model=...` and YAML `args:` go through Serve's typed builder call.
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    built = call_user_app_builder_with_args_if_necessary(
        build_app, {"model": "/models/x", "max_video_frames": "100"}
    )
    assert built._bound_deployment.init_args[0] == Vlm3rArgs(model="/models/x", max_video_frames=100)
    # Importing the package alone pulls in neither Ray nor torch.
    code = "import sys, serve_apps; assert 'ray' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize(
    "path", sorted((ROOT / "serve_apps" / "config").glob("*.yaml")), ids=lambda p: p.name
)
def test_config_yaml_is_a_valid_serve_config(path):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for application in config.applications:
        assert application.import_path == "serve_apps.app:build_app"
        Vlm3rArgs.model_validate(application.args)
        deployments = {d.name: d for d in application.deployments}
        assert set(deployments) == {"Vlm3rIngress", "GeometryEncoder", "LanguageModel"}
        for name in ("GeometryEncoder", "LanguageModel"):
            assert deployments[name].ray_actor_options.num_gpus >= 0.5, f"{path.name}: {name} needs a GPU"
            assert deployments[name].autoscaling_config["max_replicas"] >= 2


# ----------------------------------------------------------------------------------------------
# Hostile input, strict types, limits (the same checks run live in test_hostile_clients.py)


@pytest.mark.parametrize(
    "body, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"model": "vlm3r", "max_tokens": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"model": "\xff\xfe"}', "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_hostile_json_is_a_400(body, words):
    e = _error(parse_chat_request, body)
    assert (e.status, e.code) == (400, "invalid_json") and words in e.message and len(e.message) < 300


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": 10.0}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"n": "1"}, "n"),
        ({"stream_options": {"include_usage": "true"}}, "stream_options.include_usage"),
    ],
)
def test_types_are_strict(extra, param):
    e = _error(parse_chat_request, _chat([_video_part()], **extra))
    assert (e.status, e.code, e.param) == (400, "invalid_value", param)


def test_message_and_part_counts_are_checked_before_validation():
    import json

    many = json.dumps({"model": "vlm3r", "messages": [{}] * 50}).encode()
    e = _error(parse_chat_request, many, 16, 16)
    assert (e.status, e.code, e.param) == (400, "too_many_messages", "messages") and "50 messages" in e.message
    e = _error(parse_chat_request, _chat([_video_part()] * 9), 16, 8)
    assert (e.code, e.param) == ("too_many_content_parts", "messages[0].content")
    assert parse_chat_request(_chat([_video_part()] * 8), 16, 8).messages[0].content[7].type == "video_url"


def test_huge_values_are_not_echoed_back_whole():
    chat = parse_chat_request(b'{"model": "vlm3r", "messages": [{"role": "user"}], "max_tokens": ' + b"7" * 4000 + b"}")
    e = _error(requested_max_tokens, chat, 16, 64)
    assert e.param == "max_tokens" and "(4000 chars)" in e.message and len(e.message) < 200


def test_data_urls_are_size_checked_before_decoding():
    payload = base64.b64encode(b"v" * 3000).decode()
    url = "data:video/mp4;base64," + payload
    assert len(decode_data_url(url, "p", 3000)) == 3000  # at the limit
    e = _error(decode_data_url, "data:video/mp4;base64," + base64.b64encode(b"v" * 3001).decode(), "p", 3000)
    assert (e.status, e.code, e.param) == (413, "video_too_large", "p") and "limit of 3000" in e.message
    e = _error(decode_data_url, "data:video/mp4;base64," + "A" * 4_000_000, "p", 3000)  # refused undecoded
    assert e.status == 413


def test_retry_after_header_on_429_and_503():
    for status in (429, 503):
        response = ApiError(status, "busy", "overloaded", retry_after=0.2).response()
        assert response.status_code == status and response.headers["retry-after"] == "1"
    assert "retry-after" not in ApiError(400, "bad", "invalid_value").response().headers


def test_headers_and_the_body_budget():
    from serve_apps.admission import BodyBudget, check_headers

    check_headers([(b"host", b"x" * 96)], 100)
    e = _error(check_headers, [(b"host", b"x" * 97)], 100)
    assert (e.status, e.code) == (431, "headers_too_large") and "101 bytes" in e.message
    budget = BodyBudget(100, retry_after_s=2)
    held = budget.reserve(60)
    e = _error(budget.reserve, 41)
    assert (e.status, e.code, e.retry_after) == (503, "overloaded", 2) and "limit of 100" in e.message
    budget.release(held)
    assert budget.reserve(100) == 100 and budget.held == 100


@pytest.fixture(scope="module")
def admission():
    from serve_apps.admission import Admission
    from vlm3r_core.inference import load_processor

    limits = dict(max_question_tokens=20, max_options=3, max_video_pixels=64 * 48, max_video_frames=30,
                  max_video_duration_s=5.0, video_codecs=("h264",))
    return Admission(Vlm3rArgs(**limits), load_processor("tiny"))


def _query(text: str, video: bytes = b""):
    from serve_apps.openai_protocol import Query, VideoSource, split_options

    question, options = split_options(text)
    return Query(question, options, VideoSource(param="p", data=video))


def test_admission_counts_question_tokens_with_the_models_tokenizer(admission):
    tokenizer = admission.processor.tokenizer
    at_limit = "How many chairs are in this room?" + " chair" * 11
    assert len(tokenizer.encode(at_limit, add_special_tokens=False)) == 20
    assert admission.check_text(_query(at_limit)) == 20
    e = _error(admission.check_text, _query(at_limit + " chair"))
    assert (e.status, e.code, e.param) == (400, "question_too_long", "messages[0].content") and "21 tokens" in e.message
    e = _error(admission.check_text, _query("x" * 5_000_000))  # only a bounded prefix is tokenized
    assert "more than 20 tokens (5000000 characters)" in e.message
    e = _error(admission.check_text, _query("Which?\nOptions:\nA. a\nB. b\nC. c\nD. d"))
    assert (e.code, e.param) == ("too_many_options", "messages[0].content") and "4 options" in e.message
    for token in ("<image>", "<|im_end|>", "<|endoftext|>"):
        e = _error(admission.check_text, _query(f"How {token} many?"))
        assert e.code == "invalid_value" and token in e.message


def test_admission_reads_the_container_not_the_frames(admission, tmp_path):
    import numpy as np

    from vlm3r_core.video import write_video

    def video(w, h, n, fps=8) -> bytes:
        write_video(str(tmp_path / "v.mp4"), np.zeros((n, h, w, 3), np.uint8), fps=fps)
        return (tmp_path / "v.mp4").read_bytes()

    probe = admission.check_video(video(64, 48, 30), "p")
    assert (probe.width, probe.height, probe.num_frames) == (64, 48, 30)
    cases = [
        (video(66, 48, 4), 413, "video_resolution_too_large", "66x48 = 3168 pixels"),
        (video(64, 48, 31), 413, "video_too_long", "31 frames"),
        (video(64, 48, 12, fps=2), 413, "video_too_long", "6.0 s long"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 415, "unsupported_media_type", "PNG image"),
        (video(64, 48, 4)[:300], 422, "undecodable_video", "cannot open"),
    ]
    for data, status, code, words in cases:
        e = _error(admission.check_video, data, "p")
        assert (e.status, e.code, e.param) == (status, code, "p") and words in e.message, e.message
    probe = admission.check_video(video(64, 48, 8), "p")
    prompt = admission.check_prompt(_query("How many chairs?"), probe, 16)
    room = admission.context_tokens - prompt
    assert admission.check_prompt(_query("How many chairs?"), probe, room) == prompt
    e = _error(admission.check_prompt, _query("How many chairs?"), probe, room + 1)
    assert (e.status, e.code) == (400, "context_length_exceeded") and f"the prompt is {prompt}" in e.message


def test_run_isolated_keeps_a_failure_with_its_item():
    from serve_apps.deployments import run_isolated

    def inverses(xs: list[float]) -> list[float]:
        return [1 / x for x in xs]

    assert run_isolated(inverses, [1.0, 2.0]) == ([1.0, 0.5], False)
    results, alone = run_isolated(inverses, [1.0, 0.0, 4.0])
    assert alone and results[0] == 1.0 and results[2] == 0.25 and isinstance(results[1], ZeroDivisionError)
    results, alone = run_isolated(inverses, [0.0])
    assert not alone and isinstance(results[0], ZeroDivisionError)


def test_every_setting_passes_as_a_key_value_string():
    """``serve run serve_apps.app:build_app key=value ...`` hands every value over as a string
    (the CLI's own parsing, then Serve's typed builder call)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.scripts import convert_args_to_dict

    values = {
        "model": "/models/x",
        "served_model_name": "m",
        "api_keys": "k1,k2",
        "allowed_uri_prefixes": "s3://a/videos/, s3://b/",
        "video_codecs": "h264",
    }
    for name, info in Vlm3rArgs.model_fields.items():
        if name not in values:
            values[name] = str(info.default)
    cli = convert_args_to_dict(tuple(f"{name}={value}" for name, value in values.items()))
    built = call_user_app_builder_with_args_if_necessary(build_app, cli)
    args = built._bound_deployment.init_args[0]
    assert args.api_keys == ("k1", "k2") and args.allowed_uri_prefixes == ("s3://a/videos/", "s3://b/")
    assert args.video_codecs == ("h264",) and args.max_video_pixels == 2560 * 1440
    assert args.model_dump() == {**Vlm3rArgs().model_dump(), **{k: getattr(args, k) for k in ("model", "served_model_name", "api_keys", "allowed_uri_prefixes", "video_codecs")}}
    assert Vlm3rArgs(api_keys="").api_keys == ()
    with pytest.raises(pydantic.ValidationError, match="max_inflight_body_bytes"):
        Vlm3rArgs(max_body_bytes=100, max_inflight_body_bytes=99)
