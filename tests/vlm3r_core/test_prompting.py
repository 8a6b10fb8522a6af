"""The one prompt builder: official question format, time line, ChatML split."""

import pytest

from vlm3r_core.prompting import (
    PromptConfig,
    answer_text,
    build_user_message,
    format_question,
    render_chatml,
)


def test_question_text_matches_the_official_vsibench_format():
    mc = format_question("Which is closest to the bed?", ["A. chair", "B. lamp"])
    assert mc == (
        "These are frames of a video.\nWhich is closest to the bed?\nOptions:\nA. chair\nB. lamp\n"
        "Answer with the option's letter from the given choices directly."
    )
    na = format_question("How many chairs are in this room?")
    assert na == (
        "These are frames of a video.\nHow many chairs are in this room?\n"
        "Please answer the question using a single word or phrase."
    )


def test_user_message_has_one_placeholder_and_the_time_line_by_default():
    msg = build_user_message("How big?", timestamps=[0.0, 1.5], duration_s=3.0)
    assert msg.startswith("<image>\nThe video lasts for 3.00 seconds, and 2 frames are uniformly sampled")
    assert "located at 0.00s,1.50s. Please answer" in msg
    assert msg.endswith("How big?\nPlease answer the question using a single word or phrase.")
    plain = build_user_message("How big?", config=PromptConfig(add_time_instruction=False))
    assert plain.startswith("<image>\nThese are frames of a video.")
    with pytest.raises(ValueError, match="timestamps"):
        build_user_message("How big?")


def test_chatml_separates_the_supervised_completion():
    prompt, completion = render_chatml("<image>\nQ?", "B")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert completion == "B<|im_end|>"
    assert render_chatml("<image>\nQ?")[1] == ""
    with pytest.raises(ValueError, match="exactly once"):
        render_chatml("Q without video")


def test_answer_is_the_letter_for_multiple_choice_and_the_value_otherwise():
    assert answer_text(["A. x", "B. y"], "y", "B") == "B"
    assert answer_text([], "3.2", None) == "3.2"
    with pytest.raises(ValueError, match="mc_answer"):
        answer_text(["A. x"], "x", None)
