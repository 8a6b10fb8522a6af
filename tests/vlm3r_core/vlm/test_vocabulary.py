"""Generation never picks an id the tokenizer does not have (Qwen2's padding rows) nor the video placeholder.

Qwen2-7B's LM head has 152,064 rows for 151,646 tokens; the official loader resizes the embeddings to the
tokenizer, ours keeps the rows and masks them. The tiny preset is padded the same way: 1,024 rows for the
959 tokens of its tokenizer.
"""

from __future__ import annotations

import copy

import torch

from vlm3r_core.inference import GenerationInputs, generate
from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration
from vlm3r_core.vlm.model import mask_unproducible_logits


def _features() -> VideoFeatures:
    g = torch.Generator().manual_seed(0)
    return VideoFeatures(
        torch.randn(2, 2, 49, 32, generator=g), torch.randn(2, 2, 1, 48, generator=g),
        torch.randn(2, 2, 49, 48, generator=g), torch.tensor([[True, True], [True, False]]),
    )  # fmt: skip


def test_masked_logits_equal_the_unpadded_model_and_generation_stays_in_the_vocabulary(tiny_config, processor, messages):
    tokens, rows = processor.vocab_size, tiny_config.text["vocab_size"]
    assert (tokens, rows) == (959, 1024) and processor.input_only_ids == (tiny_config.image_token_id,)
    padded = Vlm3rForConditionalGeneration.from_config(tiny_config).eval()
    unpadded = copy.deepcopy(padded)
    unpadded.language_model.resize_token_embeddings(tokens)  # what the official loader does
    batch = processor.build_batch(messages)
    with torch.no_grad():
        first = unpadded(batch.input_ids, batch.attention_mask, features=_features()).logits[:, -1].argmax(-1)
        head = padded.language_model.lm_head.weight
        # The padding rows and the placeholder row outbid each sample's favourite token.
        head[tokens:] = 4 * head[first[0]]
        head[tiny_config.image_token_id] = 4 * head[first[1]]
        head_u = unpadded.language_model.lm_head.weight
        head_u[tiny_config.image_token_id] = head[tiny_config.image_token_id]

        logits = padded(batch.input_ids, batch.attention_mask, features=_features()).logits  # (B, L, 1024)
        reference = unpadded(batch.input_ids, batch.attention_mask, features=_features()).logits  # (B, L, 959)
    masked = mask_unproducible_logits(logits, tokens)
    assert masked.shape[-1] == rows and torch.isneginf(masked[..., tokens:]).all()
    torch.testing.assert_close(masked[..., :tokens], reference, rtol=0, atol=0)

    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=6)
    unmasked = padded.generate(features=_features(), **kwargs)
    assert (unmasked >= tokens).any()  # without the mask the padded model emits ids the tokenizer lacks
    inputs = GenerationInputs(text=batch, features=_features(), prompt_tokens=[0, 0], vocab_size=tokens,
                              suppress_ids=processor.input_only_ids)  # fmt: skip
    ids = generate(padded, inputs, max_new_tokens=6)
    assert (ids < tokens).all() and not (ids == tiny_config.image_token_id).any()
    # The same tokens as the official (resized) model, which cannot emit the placeholder either.
    expected = unpadded.generate(features=_features(), **kwargs)
    assert torch.equal(ids, expected)
