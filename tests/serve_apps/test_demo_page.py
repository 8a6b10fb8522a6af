"""The browser demo page (``/demo``) on a real local Ray Serve app (loopback), used from headless Chromium.

The app serves a tiny model saved by ``save_pretrained`` (8 frames per video) with a data root as its
demo videos: one rendered synthetic scene and its generated benchmark questions, as ``make demo``
writes them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests

from datagen.qa import BENCHMARK_SCHEMA, QAConfig, assign_letters, generate_scene_rows
from datagen.synthetic.world import SyntheticConfig, write_synthetic_scene
from tests.browser import non_background_pixels, requires_chromium, save_screenshots, start_chromium
from vlm3r_core import storage
from vlm3r_core.point_cloud import PointCloud, scene_point_cloud
from vlm3r_core.presets import get_preset
from vlm3r_core.scene import read_scene, scene_dir
from vlm3r_core.video import write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

API_KEY = "demo-key-456"
APP = "vlm3r-demo"
SCENE = "synthetic/syn-000000"
VIEWER_BACKGROUND = (17, 24, 39)  # serve_apps/static/viewer.js


@dataclass
class DemoService:
    base_url: str
    root: Path
    video: Path

    def get(self, path: str, key: str | None = API_KEY, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def demo(serve_port, tmp_path_factory):
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import Vlm3rArgs

    root = tmp_path_factory.mktemp("demo")
    scene = write_synthetic_scene(str(root), "syn-000000", 0, SyntheticConfig(width=160, height=120, fps=8, duration_s=3), "val")
    video = scene.video_uri(scene_dir(str(root), "synthetic", "syn-000000"))
    qa = QAConfig(tasks=("object_counting", "object_rel_distance", "room_size_estimation"), default_cap=2, route_planner="builtin")
    rows = assign_letters(generate_scene_rows(scene, video, qa), 0)
    storage.write_parquet(str(root / "qa" / "benchmark" / "val" / "part-00000.parquet"), pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA))
    config = get_preset("tiny", num_frames=8)
    model_dir = str(root / "model")
    # saved as training saves it (no frozen encoders: loading rebuilds the seeded ones, point heads included)
    trained_parts = ("fusion", "projector", "image_newline", "language_model")
    model = Vlm3rForConditionalGeneration.from_config(config, components=trained_parts)
    model.save_pretrained(model_dir, Vlm3rProcessor.from_config(config))
    args = Vlm3rArgs(model=model_dir, api_keys=(API_KEY,), demo_videos=str(root), default_max_tokens=8,
                     cut3r_point_heads=True)  # fmt: skip
    port = serve_port()
    serve.run(build_app(args), name=APP, route_prefix="/")
    yield DemoService(f"http://127.0.0.1:{port}", root, Path(video))
    serve.delete(APP)


def test_demo_routes(demo):
    root = requests.get(f"{demo.base_url}/", timeout=30)
    assert root.history and root.history[0].status_code in (302, 307) and root.url.endswith("/demo")
    assert root.status_code == 200 and "<canvas id=\"viewer\"" in root.text  # the page needs no key
    assert "http" not in root.text.replace(demo.base_url, "")  # every asset is served by the app
    js = demo.get("/demo/static/viewer.js", key=None)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert demo.get("/demo/static/..%2Fargs.py").status_code == 404
    assert demo.get("/demo/videos", key=None).status_code == 401
    assert demo.get("/demo/videos", key="wrong").json()["error"]["code"] == "invalid_api_key"

    listing = demo.get("/demo/videos").json()
    assert listing["model"] == "vlm3r" and listing["num_frames"] == 8
    (video,) = listing["videos"]
    assert video["id"] == SCENE and video["has_layout"]
    types = [q["question_type"] for q in video["questions"]]
    assert "object_counting" in types and "object_rel_distance" in types
    assert all(types.count(t) <= 3 for t in types)

    assert demo.get("/demo/videos/file", params={"video": SCENE}).content == demo.video.read_bytes()
    assert demo.get("/demo/videos/file", params={"video": "synthetic/none"}).status_code == 404
    layout = PointCloud.from_json(demo.get("/demo/videos/layout", params={"video": SCENE}).json())
    assert len(layout.points) > 10_000 and len(layout.cameras) == 24  # every frame of a 24-frame scan

    headers = {"Authorization": f"Bearer {API_KEY}"}
    frames = requests.post(f"{demo.base_url}/demo/frames", data=demo.video.read_bytes(), headers=headers, timeout=60)
    sampled = frames.json()
    assert sampled["frame_indices"] == [0, 3, 6, 9, 13, 16, 19, 23]  # linspace(0, 23, 8, dtype=int)
    assert len(sampled["images"]) == 8 and sampled["images"][0].startswith("data:image/jpeg;base64,")
    bad = requests.post(f"{demo.base_url}/demo/frames", data=b"not a video" * 10, headers=headers, timeout=60)
    # the API's video admission, before any decoding: the bytes are no video container
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_media_type"

    # CUT3R's reconstruction of the sampled frames, in the viewer's form (Z up); the tiny model's
    # seeded point heads are never confident: 409 at the default threshold, every point at 1.
    url = f"{demo.base_url}/demo/reconstruction"
    unsure = requests.post(url, data=demo.video.read_bytes(), headers=headers, timeout=120)
    assert unsure.status_code == 409 and "no point reaches confidence 3.0" in unsure.json()["error"]["message"]
    every = requests.post(url, params={"confidence": 1, "voxel_size": 0}, data=demo.video.read_bytes(), headers=headers, timeout=120)
    cloud = PointCloud.from_json(every.json())
    assert len(cloud.cameras) == 8 and len(cloud.points) == 8 * 4096  # session_points_per_keyframe of each frame
    assert cloud.source == "CUT3R reconstruction of the posted video"
    assert requests.post(url, params={"confidence": 0.5}, data=b"x", headers=headers, timeout=30).status_code == 400


def test_a_folder_of_videos_with_benchmark_rows(tmp_path):
    """``demo_videos`` as a plain folder of videos, questions from ``demo_questions`` (no Ray needed)."""
    from serve_apps.args import Vlm3rArgs
    from serve_apps.demo import DemoSite
    from serve_apps.openai_protocol import ApiError

    frames = np.zeros((12, 32, 48, 3), np.uint8)
    write_video(str(tmp_path / "videos" / "a.mp4"), frames, fps=4)
    write_video(str(tmp_path / "videos" / "sub" / "b.mp4"), frames + 60, fps=4)
    common = {"dataset": "mine", "scene_name": "a", "options": [], "video": str(tmp_path / "videos" / "a.mp4")}
    rows = [{**common, "id": f"c{i}", "question_type": "object_counting", "question": f"How many {i}?", "ground_truth": "2"} for i in range(4)]
    rows.append({**common, "id": "elsewhere", "question_type": "object_counting", "question": "?", "ground_truth": "1",
                 "video": str(tmp_path / "other.mp4")})
    storage.write_jsonl(str(tmp_path / "rows.jsonl"), rows)
    site = DemoSite(Vlm3rArgs(demo_videos=str(tmp_path / "videos"), demo_questions=str(tmp_path / "rows.jsonl")))

    listing = site.listing()
    assert listing["num_frames"] == get_preset("tiny").num_frames
    videos = {v["id"]: v for v in listing["videos"]}
    assert list(videos) == ["a", "sub/b"] and not any(v["has_layout"] for v in videos.values())
    assert [q["id"] for q in videos["a"]["questions"]] == ["c0", "c1", "c2"]  # 3 per question type
    assert videos["sub/b"]["questions"] == []
    assert site.video_file("sub/b") == ((tmp_path / "videos" / "sub" / "b.mp4").read_bytes(), "video/mp4")
    for call, code in ((lambda: site.layout("a"), "no_layout"), (lambda: site.video_file("c"), "not_found"),
                       (lambda: site.frames(b""), "missing_video")):
        with pytest.raises(ApiError) as info:
            call()
        assert info.value.code == code
    sampled = site.frames((tmp_path / "videos" / "a.mp4").read_bytes())
    assert sampled["num_frames"] == 12 and len(sampled["images"]) == listing["num_frames"]
    assert sampled["frame_indices"] == np.linspace(0, 11, listing["num_frames"], dtype=int).tolist()


def _wait(driver, condition: str, timeout: float, *args):
    """Waits until the JavaScript expression ``condition`` is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return {condition};", *args)
    )


@requires_chromium
def test_page_answers_a_benchmark_question_and_draws_the_3d_view(demo, tmp_path, screenshots_dir):
    from openai import OpenAI
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = start_chromium(1280, 980)
    try:
        driver.get(f"{demo.base_url}/")
        _wait(driver, "document.getElementById('video-select').options[0].text.includes('unavailable')", 30)
        key = driver.find_element(By.ID, "api-key")
        key.send_keys(API_KEY, Keys.TAB)  # stored in sessionStorage, the list loads with it
        assert driver.execute_script("return sessionStorage.getItem('vlm3r-api-key')") == API_KEY
        _wait(driver, "document.getElementById('video-select').options.length > 1", 30)
        Select(driver.find_element(By.ID, "video-select")).select_by_value(SCENE)

        # The sampled frames (the model's 8) and CUT3R's reconstruction of them appear.
        _wait(driver, "[...document.querySelectorAll('#frames img')].filter(i => i.complete && i.naturalWidth > 0).length === 8", 60)
        _wait(driver, "document.getElementById('viewer').dataset.loaded === 'true'", 60)
        assert non_background_pixels(driver, "viewer", VIEWER_BACKGROUND) > 2000
        assert "CUT3R reconstruction of the posted video (every point" in driver.find_element(By.ID, "viewer-source").text

        # A generated multiple-choice question; the answer streams in, then the ground truth shows.
        questions = Select(driver.find_element(By.ID, "question-select"))
        option = next(o for o in questions.options if o.text.startswith("[object_rel_distance]"))
        questions.select_by_value(option.get_attribute("value"))
        text = driver.find_element(By.ID, "question-text").get_attribute("value")
        assert "\nOptions:\nA. " in text
        driver.find_element(By.ID, "ask").click()
        _wait(driver, "document.getElementById('answer').dataset.state !== 'streaming'", 120)
        answer = driver.find_element(By.ID, "answer")
        assert answer.get_attribute("data-state") == "done", answer.text
        row = next(
            q for q in demo.get("/demo/videos").json()["videos"][0]["questions"] if q["id"] == option.get_attribute("value")
        )
        truth = driver.find_element(By.ID, "truth")
        assert truth.is_displayed() and truth.text.startswith(f"Ground truth: {row['mc_answer']}. ")
        # What the page shows is what the API answers for the same video and question.
        video_url = "data:video/mp4;base64," + base64.b64encode(demo.video.read_bytes()).decode()
        client = OpenAI(base_url=f"{demo.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        expected = client.chat.completions.create(
            model="vlm3r",
            messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": text}]}],
        ).choices[0].message.content
        assert answer.text == expected.strip() and answer.text
        save_screenshots(driver, tmp_path, "demo.png", screenshots_dir)

        # A point cloud from a file (the viewer's JSON) replaces the layout and is drawn.
        cloud = scene_point_cloud(read_scene(str(demo.root / "scenes" / SCENE)), num_points=3000, seed=1)
        cloud_file = tmp_path / "cloud.json"
        cloud_file.write_text(json.dumps(cloud.to_json()))
        driver.execute_script("document.getElementById('cloud-file').hidden = false")
        driver.find_element(By.ID, "cloud-file").send_keys(str(cloud_file))
        _wait(driver, "document.getElementById('viewer-source').textContent.includes(arguments[0])", 30, f"{len(cloud.points)} points")
        assert non_background_pixels(driver, "viewer", VIEWER_BACKGROUND) > 500

        # An uploaded video: its sampled frames are shown, and it has no benchmark questions.
        driver.execute_script("document.getElementById('video-upload').hidden = false")
        driver.find_element(By.ID, "video-upload").send_keys(str(demo.video))
        _wait(driver, "document.getElementById('question-select').disabled", 30)
        _wait(driver, "[...document.querySelectorAll('#frames img')].filter(i => i.complete && i.naturalWidth > 0).length === 8", 60)
    finally:
        driver.quit()
