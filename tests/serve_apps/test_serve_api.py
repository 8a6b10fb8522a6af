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
    ):
        e = _error(check_uri_allowed, uri, allowed, "p")
        assert (e.status, e.code) == (403, "uri_not_allowed") and uri in e.message
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
