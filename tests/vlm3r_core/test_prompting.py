"""The one prompt builder: official question format, time line, ChatML split."""

import pytest

from vlm3r_core.prompting import (
    PromptConfig,
    answer_text,
    build_user_message,
    format_question,
    prompt_form,
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


# The official renderings, byte for byte (VITA-Group/VLM-3R: the lmms-eval model adds "<image>\n" before the
# task's text and no time line; llava/train/train.py writes the time line with "{times}.Please answer" and
# keeps the data's "<image>\n" newline after it). Four frames of a 6.5 s video.
NUMERIC = ("How many chair(s) are in this room?", ())
MULTIPLE_CHOICE = ("Which of these objects (chair, lamp) is the closest to the bed?", ("A. chair", "B. lamp"))
TIMES = dict(timestamps=[0.0, 2.0, 4.0, 6.0], duration_s=6.5)
TIME_LINE = (
    "The video lasts for 6.50 seconds, and 4 frames are uniformly sampled from it. "
    "These frames are located at 0.00s,2.00s,4.00s,6.00s."
)
RENDERED = {
    ("official-eval", "numeric"): (
        "<image>\nThese are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    ),
    ("official-eval", "mc"): (
        "<image>\nThese are frames of a video.\nWhich of these objects (chair, lamp) is the closest to the bed?\n"
        "Options:\nA. chair\nB. lamp\nAnswer with the option's letter from the given choices directly."
    ),
    ("official-train", "numeric"): (
        "<image>\n" + TIME_LINE + "Please answer the following questions related to this video.\n\n"
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    ),
    ("official-train", "mc"): (
        "<image>\n" + TIME_LINE + "Please answer the following questions related to this video.\n\n"
        "These are frames of a video.\nWhich of these objects (chair, lamp) is the closest to the bed?\n"
        "Options:\nA. chair\nB. lamp\nAnswer with the option's letter from the given choices directly."
    ),
    ("ours", "numeric"): (
        "<image>\n" + TIME_LINE + " Please answer the following questions related to this video.\n"
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase."
    ),
    ("ours", "mc"): (
        "<image>\n" + TIME_LINE + " Please answer the following questions related to this video.\n"
        "These are frames of a video.\nWhich of these objects (chair, lamp) is the closest to the bed?\n"
        "Options:\nA. chair\nB. lamp\nAnswer with the option's letter from the given choices directly."
    ),
}


@pytest.mark.parametrize("form, kind", sorted(RENDERED))
def test_each_prompt_form_renders_byte_for_byte(form, kind):
    question, options = NUMERIC if kind == "numeric" else MULTIPLE_CHOICE
    config = prompt_form(form)
    assert config.form == form
    assert build_user_message(question, options, **TIMES, config=config) == RENDERED[form, kind]


def test_the_official_eval_chat_prompt_is_the_qwen_1_5_template():
    prompt, _ = render_chatml(RENDERED["official-eval", "numeric"], system_prompt=prompt_form("official-eval").system_prompt)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_prompt_forms_are_named_and_checked():
    assert PromptConfig().form == "ours"
    assert PromptConfig(pre_prompt="Look.").form == "custom"
    assert prompt_form("official-eval") == PromptConfig(add_time_instruction=False)
    with pytest.raises(ValueError, match="unknown prompt form 'paper'"):
        prompt_form("paper")
    with pytest.raises(ValueError, match="time_style"):
        PromptConfig(time_style="llava")
