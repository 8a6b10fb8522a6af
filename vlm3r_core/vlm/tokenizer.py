"""Tokenizers of the VLM: the offline tokenizer of the ``tiny`` preset, and loading any tokenizer.

The ``tiny`` tokenizer ships with the package (``vlm3r_core/vlm/tiny_tokenizer/``) so tests and the
local demo never touch the network. It is a byte-level BPE (every string round-trips through
encode/decode) with Qwen2's ChatML special tokens and the video placeholder, trained on the prompt
and answer vocabulary of the system: the fixed prompt text of ``vlm3r_core.prompting``, the
question templates, object categories, digits and option letters. Rebuild the shipped files with::

    python -m vlm3r_core.vlm.tokenizer

(training is deterministic; ``tests/vlm3r_core/vlm/test_tokenizer.py`` checks the shipped file is
what this module builds).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vlm3r_core import prompting

TINY_TOKENIZER_DIR = Path(__file__).with_name("tiny_tokenizer")
TINY_VOCAB_SIZE = 1024
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, prompting.IM_START, prompting.IM_END, prompting.VIDEO_PLACEHOLDER]

# Object categories of the indoor datasets (ScanNet / ScanNet++ / ARKitScenes, VSI-Bench) and the
# synthetic scenes; unknown words still encode (byte-level), just into more pieces.
_CATEGORIES = (
    "chair table sofa bed desk cabinet shelf bookshelf door window toilet sink bathtub shower "
    "refrigerator oven stove microwave dishwasher washer dryer tv monitor computer keyboard lamp "
    "pillow blanket towel curtain picture mirror plant trash can bin box bag backpack basket "
    "stool bench counter nightstand dresser wardrobe fireplace radiator heater fan clock vase "
    "printer whiteboard blackboard board piano guitar laptop telephone cup bottle bowl kettle "
    "toaster sofa_chair coffee table dining table office chair armchair ceiling light floor wall"
)
_TEMPLATES = (
    "How many {c}(s) are in this room?",
    "What is the length of the longest dimension (length, width, or height) of the {c}, measured in centimeters?",
    "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the combined space.",
    "Measuring from the closest point of each object, what is the direct distance between the {c} and the {c} (in meters)?",
    "Measuring from the closest point of each object, which of these objects ({c}, {c}, {c}, {c}) is the closest to the {c}?",
    "If I am standing by the {c} and facing the {c}, is the {c} to my left, right, or back?",
    "An object is to my back if I would have to turn at least 135 degrees in order to face it.",
    "Consider the first-time appearance order of the following categories in the video: {c}, {c}, {c}, {c}.",
    "What will be the first-time appearance order of the following categories in the video?",
    "You are a robot beginning at the {c} facing the {c}. You want to navigate to the {c}.",
    "You will perform the following actions (Note: for each [please fill in], choose either 'turn back,' 'turn left,' or 'turn right.'):",
    "1. Go forward until the {c} 2. [please fill in] 3. Go forward until the {c}.",
    "What is the approximate distance (in meters) between the camera (or the person filming) and the {c} in frame 12 of 32?",
    "Approximately how far (in meters) did the camera move between frame 3 and frame 27 of 32?",
    "During the video, which direction did the camera mainly move between frame 5 and frame 20?",
    "Which object is closer to the camera at frame 8 of 32: the {c} or the {c}?",
    "From the camera's viewpoint at frame 10, is the {c} to the left or right of the {c}? above or below? in front or behind?",
    "forward backward left right up down closer farther yes no",
)
_ANSWERS = tuple("A B C D A. B. C. D. 0 1 2 3 4 5 6 7 8 9 0.5 1.25 12.8".split())


def _training_corpus() -> list[str]:
    categories = _CATEGORIES.split()
    texts = [
        prompting.SYSTEM_PROMPT,
        prompting.PRE_PROMPT,
        prompting.NUMERIC_POST_PROMPT,
        prompting.MC_POST_PROMPT,
    ]
    texts.append(prompting.time_instruction(61.5, [i * 1.98 for i in range(32)]))
    for i, template in enumerate(_TEMPLATES):
        for j in range(len(categories)):
            c = categories[(i * 7 + j) % len(categories)]
            texts.append(template.replace("{c}", c))
            texts.append("Options:\nA. " + c + "\nB. " + categories[(j + 1) % len(categories)])
    texts.extend(_ANSWERS)
    texts.extend(prompting.render_chatml(prompting.VIDEO_PLACEHOLDER + "\nq", "A"))
    return texts


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Trains the byte-level BPE of the ``tiny`` preset (deterministic, a second on one core)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=prompting.IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[prompting.IM_START, prompting.VIDEO_PLACEHOLDER],
        padding_side="right",
    )


def load_tokenizer(name_or_path: str | None) -> PreTrainedTokenizerBase:
    """Loads a tokenizer: ``None`` gives the shipped ``tiny`` tokenizer; otherwise a local folder
    or a model hub id (``AutoTokenizer``).

    Raises:
        ValueError: the tokenizer lacks a single-token video placeholder or ``<|im_end|>``.
    """
    if name_or_path is None:
        tok = _wrap(Tokenizer.from_file(str(TINY_TOKENIZER_DIR / "tokenizer.json")))
    else:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    for token in (prompting.VIDEO_PLACEHOLDER, prompting.IM_END):
        ids = tok.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"tokenizer {name_or_path or 'tiny'!r} must encode {token!r} as one token, got {ids}"
            )
    if tok.pad_token_id is None:
        raise ValueError(f"tokenizer {name_or_path or 'tiny'!r} has no pad token")
    return tok


def main(argv: list[str] | None = None) -> int:
    """Writes the ``tiny`` tokenizer to ``vlm3r_core/vlm/tiny_tokenizer/`` (or the folder given)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else TINY_TOKENIZER_DIR
    os.makedirs(out, exist_ok=True)
    tok = build_tiny_tokenizer()
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    print(f"wrote {out / 'tokenizer.json'} ({len(tok)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
