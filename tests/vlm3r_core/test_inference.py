"""The one generation path: prompt lengths known before decoding, rows stopped mid-generation."""

import numpy as np
import pytest

from vlm3r_core.inference import (
    Question,
    context_from_video,
    generate,
    generation_inputs,
    load_model,
    load_processor,
    prompt_length,
)
from vlm3r_core.video import probe_video, write_video


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, processor = load_model("tiny")
    uri = str(tmp_path_factory.mktemp("video") / "v.mp4")
    write_video(uri, np.stack([np.full((32, 48, 3), 9 * i, np.uint8) for i in range(21)]), fps=7)
    return model, processor, uri, context_from_video(model, processor, uri)


def test_prompt_length_from_the_probe_equals_the_generation_prompt(tiny):
    model, processor, uri, video = tiny
    probe = probe_video(uri)
    timestamps = tuple(float(t) for t in probe.sampled_timestamps(model.config.num_frames))
    assert timestamps == video.timestamps and probe.duration_s == video.duration_s
    questions = [Question("How many chairs?"), Question("Which is closer?", ("A. chair", "B. table"))]
    inputs = generation_inputs(model, processor, questions, [video, video])
    light = load_processor("tiny")  # no weights: what the serving ingress holds
    assert [prompt_length(light, q, timestamps, probe.duration_s) for q in questions] == inputs.prompt_tokens
    with pytest.raises(ValueError, match="<image>"):
        prompt_length(light, Question("Where is the <image>?"), timestamps, probe.duration_s)


def test_stop_rows_ends_rows_and_then_the_generation(tiny):
    model, processor, _, video = tiny
    pad = model.config.text["pad_token_id"]
    inputs = generation_inputs(model, processor, [Question("Describe the room."), Question("Count it.")], [video, video])
    whole = generate(model, inputs, 12)
    steps = []

    def stop_first_after_3() -> list[bool]:
        steps.append(1)
        return [len(steps) >= 3, False]

    ids = generate(model, inputs, 12, stop_rows=stop_first_after_3)
    assert ids[0, :3].tolist() == whole[0, :3].tolist() and set(ids[0, 3:].tolist()) <= {pad}
    assert ids[1].tolist() == whole[1].tolist()  # the other row is unaffected
    steps.clear()
    ids = generate(model, inputs, 12, stop_rows=lambda: [True, True])  # both stop after the first step
    assert ids.shape[1] == 1 and ids[:, 0].tolist() == whole[:, 0].tolist()
