"""Live sessions over real HTTP on a local Ray Serve app: stream a synthetic scene's video frame
by frame, ask mid-stream and at the end (the end answer equals the offline answer on the same
frames), download the reconstruction, other keys, limits, and a killed GeometryEncoder replica.

One application for the module: the tiny preset with 8 frames per video and CUT3R point heads,
saved with ``save_pretrained``; snapshots every 3 frames into a local folder.
"""

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.datagen.scene_builder import box, make_scene, orbit_poses, write_scene_with_video
from vlm3r_core import storage
from vlm3r_core.geometry import get_cut3r_config
from vlm3r_core.presets import get_preset
from vlm3r_core.video import read_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

KEY, OTHER_KEY = "live-key-1", "live-key-2"
APP = "vlm3r-live"
SNAPSHOT_EVERY = 3
POINTS_PER_KEYFRAME = 64
MAX_SESSIONS = 3
MAX_FPS = 10  # the other tests push at most 8 frames a second


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


class Live:
    def __init__(self, base_url: str, storage_uri: str):
        self.base_url, self.storage_uri = base_url, storage_uri

    def headers(self, key: str = KEY) -> dict:
        return {"Authorization": f"Bearer {key}"}

    def open(self, key: str = KEY) -> requests.Response:
        return requests.post(f"{self.base_url}/v1/sessions", headers=self.headers(key), timeout=60)

    def push(self, session_id: str, frame: bytes, key: str = KEY, **query) -> requests.Response:
        return requests.post(
            f"{self.base_url}/v1/sessions/{session_id}/frames",
            params=query,
            data=frame,
            headers={**self.headers(key), "Content-Type": "image/png"},
            timeout=60,
        )

    def get(self, path: str, key: str = KEY, **query) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", params=query, headers=self.headers(key), timeout=60)

    def delete(self, session_id: str, key: str = KEY) -> requests.Response:
        return requests.delete(f"{self.base_url}/v1/sessions/{session_id}", headers=self.headers(key), timeout=60)

    def ask(self, video_url: str, question: str, key: str = KEY) -> str:
        from openai import OpenAI

        client = OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=120)
        messages = [
            {
                "role": "user",
                "content": [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": question}],
            }
        ]
        return client.chat.completions.create(model="vlm3r", messages=messages, max_tokens=6).choices[0].message.content


@pytest.fixture(scope="module")
def live(serve_port, tmp_path_factory):
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import Vlm3rArgs

    root = tmp_path_factory.mktemp("live")
    model_dir = str(root / "model")
    config = get_preset("tiny", num_frames=8, cut3r=get_cut3r_config("tiny", enable_point_heads=True))
    Vlm3rForConditionalGeneration.from_config(config).save_pretrained(model_dir, Vlm3rProcessor.from_config(config))
    args = Vlm3rArgs(
        model=model_dir,
        api_keys=(KEY, OTHER_KEY),
        max_body_bytes=2**20,
        default_max_tokens=6,
        max_tokens_limit=16,
        request_timeout_s=90.0,
        storage_uri=str(root / "storage"),
        snapshot_every_frames=SNAPSHOT_EVERY,
        max_sessions_per_replica=MAX_SESSIONS,
        max_session_fps=MAX_FPS,
        max_frame_bytes=64 * 2**10,
        max_frame_pixels=128 * 128,
        session_points_per_keyframe=POINTS_PER_KEYFRAME,
    )
    port = serve_port()
    serve.run(build_app(args), name=APP, route_prefix="/")
    yield Live(f"http://127.0.0.1:{port}", args.storage_uri)
    serve.delete(APP)


@pytest.fixture(scope="module")
def scene_video(live, tmp_path_factory) -> Path:
    """A synthetic scene (tests/datagen/scene_builder.py) and its video: 20 frames of 48 x 64 at 8 fps."""
    poses = orbit_poses((3.0, 2.5), radius=1.5, num_frames=20)
    scene = make_scene([box(1, "chair", (3.0, 2.5, 0.45), (0.5, 0.5, 0.9))], poses, fps=8.0, width=64, height=48)
    folder = write_scene_with_video(scene, str(tmp_path_factory.mktemp("scenes")))
    return Path(storage.join(folder, scene.video.uri))


def _encoder_stats():
    from ray import serve

    return serve.get_deployment_handle("GeometryEncoder", app_name=APP).stats.remote().result(timeout_s=30)


def test_a_streamed_session_answers_mid_stream_and_like_the_offline_request_at_the_end(live, scene_video):
    video = read_video(str(scene_video), num_samples=8)  # the frames the offline sampler picks
    opened = live.open()
    assert opened.status_code == 201, opened.text
    session_id = opened.json()["id"]
    frames = [_png(f) for f in video.frames]
    question = "How many chair(s) are in this room?"
    for i, (frame, t) in enumerate(zip(frames, video.timestamps, strict=True)):
        r = live.push(session_id, frame, t=float(t), duration_s=video.duration_s)
        assert r.status_code == 200, r.text
        assert (r.json()["frame_index"], r.json()["updated"]) == (i, True)
        if i == 3:
            mid = live.ask(f"session://{session_id}", question)
            assert isinstance(mid, str) and live.get(f"/v1/sessions/{session_id}").json()["keyframes"] == 4
    end = live.ask(f"session://{session_id}", question)
    offline = live.ask("data:video/mp4;base64," + base64.b64encode(scene_video.read_bytes()).decode(), question)
    assert end == offline

    trajectory = live.get(f"/v1/sessions/{session_id}/trajectory")
    assert trajectory.status_code == 200 and [c["frame_index"] for c in trajectory.json()["cameras"]] == list(range(8)), trajectory.text

    # Every kept point (confidence >= 1, no voxel averaging): 8 keyframes x 64 points.
    ply = live.get(f"/v1/sessions/{session_id}/reconstruction", format="ply", confidence=1.0, voxel_size=0)
    assert ply.status_code == 200, ply.text
    import open3d as o3d

    path = scene_video.parent / "session.ply"
    path.write_bytes(ply.content)
    assert len(o3d.io.read_point_cloud(str(path)).points) == 8 * POINTS_PER_KEYFRAME
    glb = live.get(f"/v1/sessions/{session_id}/reconstruction", format="glb", confidence=1.0, voxel_size=0)
    assert glb.status_code == 200 and glb.content[:4] == b"glTF"

    # Another key sees nothing; the owner closes it; then nobody sees it.
    for r in (
        live.get(f"/v1/sessions/{session_id}", key=OTHER_KEY),
        live.push(session_id, frames[0], key=OTHER_KEY, t=99.0),
        live.delete(session_id, key=OTHER_KEY),
    ):
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        live.ask(f"session://{session_id}", question, key=OTHER_KEY)
    assert live.delete(session_id).status_code == 200
    assert live.get(f"/v1/sessions/{session_id}").status_code == 404
    assert not storage.exists(storage.join(live.storage_uri, "sessions", session_id, "session.json"))


def test_limits_answer_openai_errors_before_any_model_work(live):
    frame = _png(np.full((16, 16, 3), 90, np.uint8))
    opened = [live.open() for _ in range(MAX_SESSIONS + 1)]
    try:
        assert [r.status_code for r in opened[:MAX_SESSIONS]] == [201] * MAX_SESSIONS
        over = opened[MAX_SESSIONS]
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_sessions", over.text
        assert over.headers["retry-after"] == "1"
        session_id = opened[0].json()["id"]
        before = live.get(f"/v1/sessions/{session_id}").json()["frames_pushed"]
        cases = [
            (live.push(session_id, _png(np.zeros((200, 200, 3), np.uint8))), 413, "frame_resolution_too_large"),
            (live.push(session_id, b"\x00" * (65 * 2**10)), 413, "body_too_large"),
            (live.push(session_id, b"GIF89a" + b"\x00" * 64), 415, "unsupported_media_type"),
            (live.push(session_id, frame, t="soon"), 400, "invalid_value"),
            (live.push("sess_" + "0" * 32, frame), 404, "session_not_found"),
        ]
        for r, status, code in cases:
            assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        assert live.get(f"/v1/sessions/{session_id}").json()["frames_pushed"] == before  # none reached the session
        # More than MAX_FPS frames within a second: the rest get 429 before decoding.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:  # 16 at once: the encoder's max_ongoing_requests
            statuses = list(pool.map(lambda _: live.push(session_id, frame, t=0.0).status_code, range(16)))
        assert statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
        assert live.get(f"/v1/sessions/{session_id}").json()["frames_pushed"] == statuses.count(200)
    finally:
        for r in opened:
            if r.status_code == 201:
                live.delete(r.json()["id"])


def test_a_session_resumes_from_its_snapshot_when_its_replica_dies(live):
    import ray

    frames = [_png(np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)) for i in range(8)]
    session_id = live.open().json()["id"]
    for i in range(7):
        assert live.push(session_id, frames[i], t=i / 8).status_code == 200
    victim = _encoder_stats()
    assert victim.sessions >= 1
    ray.kill(ray.get_actor(victim.replica_actor, namespace="serve"), no_restart=True)
    deadline, info, errors = time.monotonic() + 90, None, []
    while time.monotonic() < deadline and info is None:
        r = live.get(f"/v1/sessions/{session_id}")
        if r.status_code == 200:
            info = r.json()
        else:  # 503 while Serve replaces the replica
            errors.append(r.text[:200])
            time.sleep(1.0)
    assert info is not None, errors[-3:]
    assert 7 - SNAPSHOT_EVERY <= info["frames_pushed"] <= 7 and info["frames_pushed"] == info["snapshot_frames"]
    assert info["frames_pushed"] == 6  # the snapshot after frame 6; frame 7 was lost
    r = live.push(session_id, frames[7], t=info["frames_pushed"] / 8)
    assert r.status_code == 200 and r.json()["frame_index"] == info["frames_pushed"], r.text
    assert live.ask(f"session://{session_id}", "How big is this room?")
    stats = _encoder_stats()
    assert stats.pid != victim.pid and stats.sessions_resumed >= 1
    assert live.delete(session_id).status_code == 200


def test_the_stream_client_streams_a_file_asks_and_saves_the_reconstruction(live, scene_video, tmp_path):
    import open3d as o3d

    from serve_apps.stream_client import StreamClientConfig, run

    out, ply = io.StringIO(), tmp_path / "room.ply"
    config = StreamClientConfig(
        url=live.base_url, video=str(scene_video), api_key=KEY, every=4, image_format="png",
        ask=("t=1:How many chair(s) are in this room?", "t=end:How big is this room?"),
        save_ply=str(ply), confidence=1.0, voxel_size=0.0, max_tokens=4,
    )  # fmt: skip
    answers = run(config, out=out)
    assert [(t, q) for t, q, _ in answers] == [(1.0, config.ask[0][4:]), (2.0, "How big is this room?")]
    assert len(o3d.io.read_point_cloud(str(ply)).points) == 5 * POINTS_PER_KEYFRAME  # frames 0, 4, ..., 16
    assert "A: " in out.getvalue()
