from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm3r_core import prompting
from vlm3r_core.vlm import IGNORE_INDEX


def test_preprocess_frames_pads_resizes_and_normalises(processor, tiny_config):
    red = np.zeros((2, 30, 50, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = np.full((3, 20, 20, 3), 51, dtype=np.uint8)
    px = processor.preprocess_frames([red, grey])
    s, g = tiny_config.siglip_image_size, tiny_config.cut3r_image_size
    assert px.siglip.shape == (2, 3, 3, s, s) and px.cut3r.shape == (2, 3, 3, g, g)
    assert px.frame_mask.tolist() == [[True, True, False], [True, True, True]]
    # mean = std = 0.5: 255 -> 1, 0 -> -1, 51 -> -0.6; padding frames stay zero.
    torch.testing.assert_close(px.siglip[0, :2, 0], torch.ones(2, s, s))
    torch.testing.assert_close(px.cut3r[0, :2, 1], -torch.ones(2, g, g))
    torch.testing.assert_close(px.siglip[1, :, 2], torch.full((3, s, s), 51 / 255 * 2 - 1))
    assert px.siglip[0, 2].abs().sum() == 0


def test_preprocess_frames_rejects_bad_input(processor):
    with pytest.raises(ValueError, match="video 1"):
        processor.preprocess_frames([np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32)])


def test_build_batch_supervises_only_the_answer(processor, messages):
    batch = processor.build_batch(messages, ["3", "B"])
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape
    for row, answer in enumerate(["3", "B"]):
        supervised = batch.labels[row][batch.labels[row] != IGNORE_INDEX]
        assert processor.tokenizer.decode(supervised) == answer + prompting.IM_END
        n = int(batch.attention_mask[row].sum())
        assert (batch.input_ids[row, :n] == processor.placeholder_id).sum() == 1
        assert (batch.input_ids[row, n:] == processor.pad_token_id).all()
        prompt, _ = prompting.render_chatml(messages[row], answer)
        assert processor.tokenizer.decode(batch.input_ids[row, :n]).startswith(prompt)


def test_build_batch_for_generation_ends_with_assistant_header(processor, messages):
    batch = processor.build_batch(messages)
    assert batch.labels is None
    n = int(batch.attention_mask[0].sum())
    assert processor.tokenizer.decode(batch.input_ids[0, :n]).endswith("<|im_start|>assistant\n")


def test_build_batch_rejects_missing_placeholder(processor):
    with pytest.raises(ValueError, match="exactly once"):
        processor.build_batch(["no video here"])
