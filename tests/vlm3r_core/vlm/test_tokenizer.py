from __future__ import annotations

import json

from vlm3r_core import prompting
from vlm3r_core.vlm.tokenizer import TINY_TOKENIZER_DIR, build_tiny_tokenizer, load_tokenizer


def test_shipped_tiny_tokenizer_is_what_the_builder_makes():
    shipped = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert json.loads(build_tiny_tokenizer().backend_tokenizer.to_str()) == shipped


def test_tiny_tokenizer_round_trips_prompts_and_has_chat_tokens(tiny_config):
    tok = load_tokenizer(None)
    assert len(tok) <= tiny_config.text["vocab_size"]
    message = prompting.build_user_message(
        "What is the size of this sofa_chair (in cm)? é", timestamps=[0.25], duration_s=1.0
    )
    prompt, completion = prompting.render_chatml(message, "12.5")
    assert tok.decode(tok.encode(prompt + completion, add_special_tokens=False)) == prompt + completion
    for token in (prompting.IM_START, prompting.IM_END, prompting.VIDEO_PLACEHOLDER):
        assert len(tok.encode(token, add_special_tokens=False)) == 1
    assert tok.encode("2025", add_special_tokens=False) == [tok.convert_tokens_to_ids(d) for d in "2025"]
