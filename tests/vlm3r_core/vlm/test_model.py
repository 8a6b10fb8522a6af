from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration


@pytest.fixture(scope="module")
def model(tiny_config):
    return Vlm3rForConditionalGeneration.from_config(tiny_config)


@pytest.fixture(scope="module")
def pixels(processor, videos):
    return processor.preprocess_frames(videos)


@pytest.fixture(scope="module")
def features(model, pixels):
    return model.encode_frames(pixels)


def test_encode_frames_shapes_and_padding(model, features, tiny_config):
    p, n = tiny_config.vision_grid**2, (tiny_config.cut3r_image_size // 16) ** 2
    assert features.vision_features.shape == (2, 3, p, tiny_config.vision_dim)
    assert features.camera_tokens.shape == (2, 3, 1, tiny_config.spatial_dim)
    assert features.patch_tokens.shape == (2, 3, n, tiny_config.spatial_dim)
    assert features.frame_mask.tolist() == [[True, True, True], [True, True, False]]
    assert features.vision_features[1, 2].abs().sum() == 0 and features.patch_tokens[1, 2].abs().sum() == 0


def test_raw_frames_and_precomputed_features_agree(model, processor, messages, pixels, features):
    batch = processor.build_batch(messages)
    raw = model(batch.input_ids, batch.attention_mask, pixels=pixels).logits
    pre = model(batch.input_ids, batch.attention_mask, features=features).logits
    assert torch.equal(raw, pre)
    # The shard path: unpadded per-video arrays (as numpy) re-batched with from_videos.
    lengths = features.frame_mask.sum(1).tolist()
    per_video = [
        [getattr(features, name)[b, :t].numpy() for b, t in enumerate(lengths)]
        for name in ("vision_features", "camera_tokens", "patch_tokens")
    ]
    shard = model(
        batch.input_ids, batch.attention_mask, features=VideoFeatures.from_videos(*per_video)
    ).logits
    assert torch.equal(raw, shard)


def test_video_tokens_follow_llava_video_layout(model, features, tiny_config):
    videos = model.embed_video(features)
    g, h, d = tiny_config.vision_grid, tiny_config.pooled_grid, tiny_config.text_dim
    assert h == math.ceil(g / 2) and tiny_config.tokens_per_frame == h * (h + 1)
    assert [v.shape for v in videos] == [(3 * h * (h + 1), d), (2 * h * (h + 1), d)]
    # Independent re-computation, LLaVA-Video style: projector, bilinear pool to ceil(g/2), then the
    # newline appended as the last column of every row of every frame.
    with torch.no_grad():
        z = torch.cat([features.camera_tokens[0], features.patch_tokens[0]], dim=1)
        x = model.projector(model.fusion(features.vision_features[0], z))  # (3, P, D)
        x = F.interpolate(x.view(3, g, g, d).permute(0, 3, 1, 2), size=(h, h), mode="bilinear").permute(
            0, 2, 3, 1
        )
        grid = videos[0].detach().view(3, h, h + 1, d)
    torch.testing.assert_close(grid[:, :, :h], x)
    assert torch.equal(grid[:, :, h], model.image_newline.detach().expand(3, h, d))


def test_placeholder_invariant_fails_loudly(model, processor, messages, features):
    batch = processor.build_batch(messages)
    ids = batch.input_ids.clone()
    ids[ids == processor.placeholder_id] = processor.pad_token_id
    with pytest.raises(ValueError, match="sample 0: expected exactly one '<image>'"):
        model(ids, batch.attention_mask, features=features)
    with pytest.raises(ValueError, match="2 videos for 1 prompts"):
        model(batch.input_ids[:1], batch.attention_mask[:1], features=features)
    with pytest.raises(ValueError, match="exactly one of features"):
        model(batch.input_ids, batch.attention_mask)


def test_only_fusion_projector_newline_and_lora_train(tiny_config, processor, messages, features):
    model = Vlm3rForConditionalGeneration.from_config(tiny_config)
    model.apply_lora()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(
        n.startswith(("fusion.", "projector.", "image_newline")) or "lora_" in n for n in names
    )
    lora_layers = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if "lora_A" in n}
    assert lora_layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n in names
    )


def test_a_few_steps_drive_the_loss_down(tiny_config, processor, messages, features):
    model = Vlm3rForConditionalGeneration.from_config(tiny_config)
    model.apply_lora()
    batch = processor.build_batch(messages[:1], ["3"])
    one = VideoFeatures(
        *(
            x[:1, :1]
            for x in (
                features.vision_features,
                features.camera_tokens,
                features.patch_tokens,
                features.frame_mask,
            )
        )
    )
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, features=one).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.vision_tower.embeddings.patch_embedding.weight.grad is None
    model.eval()
    ids = model.generate(
        processor.build_batch(messages[:1]).input_ids,
        processor.build_batch(messages[:1]).attention_mask,
        features=one,
        max_new_tokens=4,
    )
    assert processor.batch_decode(ids) == ["3"]


def test_generate_batches_videos_of_different_lengths(model, processor, messages, features):
    batch = processor.build_batch(messages)
    together = model.generate(batch.input_ids, batch.attention_mask, features=features, max_new_tokens=6)
    assert together.shape[0] == 2
    for b in range(2):
        n = int(batch.attention_mask[b].sum())
        one = VideoFeatures(*(x[b : b + 1, : int(features.frame_mask[b].sum())] for x in (
            features.vision_features, features.camera_tokens, features.patch_tokens, features.frame_mask)))  # fmt: skip
        alone = model.generate(
            batch.input_ids[b : b + 1, :n],
            batch.attention_mask[b : b + 1, :n],
            features=one,
            max_new_tokens=6,
        )
        assert torch.equal(together[b, : alone.shape[1]], alone[0])
    torch.manual_seed(0)
    sampled = model.generate(
        batch.input_ids,
        batch.attention_mask,
        features=features,
        max_new_tokens=3,
        do_sample=True,
        temperature=0.8,
    )
    assert sampled.shape[0] == 2 and sampled.shape[1] <= 3
    assert all(isinstance(t, str) for t in processor.batch_decode(sampled))


def test_too_long_sequences_fail_with_the_reason(tiny_config, processor, messages, features):
    short = Vlm3rForConditionalGeneration.from_config(
        tiny_config.replace(text=dict(tiny_config.text, max_position_embeddings=64))
    )
    batch = processor.build_batch(messages)
    with pytest.raises(ValueError, match="exceed the LLM's max_position_embeddings 64"):
        short(batch.input_ids, batch.attention_mask, features=features)
