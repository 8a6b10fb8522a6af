"""GRPO (vlm3r_core.rl): advantages and the loss against hand-computed values, rewards against the
official scorer, which rows can be scored, the teacher-forced layout, the reference policy, the
DeepSpeed update against plain torch, two data-parallel ranks agreeing to update, merged metrics,
and GRPO changing what the ``tiny`` model answers."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch

from vlm3r_core import rl
from vlm3r_core.metrics import is_numeric_question, official_parse, score_official
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import NUMERIC_POST_PROMPT, build_user_message
from vlm3r_core.rl.grpo import k3_kl
from vlm3r_core.rl.rewards import THINK_INSTRUCTION
from vlm3r_core.rl.rollout import completion_mask, select_prompts, teacher_forced_batch
from vlm3r_core.vlm import COMPONENTS, VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor

OPTIONS = ["A. chair", "B. table", "C. sofa", "D. lamp"]
TIMES = [0.0, 0.5]


def _mc_row(i: int, answer: str = "B", **extra) -> dict:
    return {
        "id": f"mc{i}",
        "question_type": "object_rel_distance",
        "options": OPTIONS,
        "ground_truth": answer,
        "mc_answer": answer,
        "question": f"Which object is closest to the bed? ({i})",
    } | extra


def _count_row(i: int, answer: str = "4", **extra) -> dict:
    question = f"How many chair(s) are in this room? ({i})"
    numeric = {"id": f"n{i}", "question_type": "object_counting", "options": None, "mc_answer": None}
    return _mc_row(i, answer) | numeric | {"question": question} | extra


# Config, advantages, loss ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"group_size": 1},
        {"temperature": 0.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"clip_eps": 0.0},
        {"clip_eps": 1.0},
        {"kl_beta": -0.1},
        {"format_weight": -1.0},
        {"answer_form": "json"},
        {"max_new_tokens": 0},
        {"micro_batch_size": 0},
        {"lr": 0.0},
        {"advantage_eps": 0.0},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        rl.GRPOConfig(**bad)


def test_group_advantages_by_hand_and_degenerate_groups_are_zero():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 3.0]])
    adv, degenerate = rl.group_advantages(rewards, eps=1e-4)
    # group 0: mean 0.5, population std 0.5; group 2: mean 0.75, std sqrt(3 * 0.75^2 + 2.25^2) / 2
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / (0.5 + 1e-4))
    std2 = math.sqrt((3 * 0.75**2 + 2.25**2) / 4)
    torch.testing.assert_close(adv[2], (rewards[2] - 0.75) / (std2 + 1e-4))
    assert adv[1].abs().sum() == 0
    assert degenerate.tolist() == [False, True, False]


def _loss(logp, old, ref, adv, mask, clip_eps=0.2, kl_beta=0.0):
    logp = torch.tensor(logp, requires_grad=True)
    parts = rl.grpo_loss(
        logp,
        torch.tensor(old),
        torch.tensor(ref),
        torch.tensor(adv),
        torch.tensor(mask),
        clip_eps,
        kl_beta,
        num_tokens=int(torch.tensor(mask).sum()),
    )
    parts.loss.backward()
    return parts, logp.grad


def test_loss_at_ratio_one_is_the_token_mean_of_minus_advantage():
    # Two completions of 3 and 1 tokens, advantages +1 and -1: every token weighs 1/4.
    logp = [[-1.0, -2.0, -0.5], [-0.7, 0.0, 0.0]]
    mask = [[True, True, True], [True, False, False]]
    parts, grad = _loss(logp, logp, logp, [1.0, -1.0], mask)
    assert parts.loss.item() == pytest.approx(-(3 * 1.0 + 1 * -1.0) / 4)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, -0.25, -0.25], [0.25, 0.0, 0.0]]))
    assert parts.clipped_tokens == 0


@pytest.mark.parametrize(
    "advantage, ratio, value, clipped",
    [
        (
            1.0,
            1.5,
            -1.2,
            True,
        ),  # good answer already more likely than at rollout: capped at 1 + eps, no gradient
        (1.0, 0.5, -0.5, False),  # good answer less likely: unclipped, pushed up
        (-1.0, 0.5, 0.8, True),  # bad answer already less likely: capped at 1 - eps, no gradient
        (-1.0, 1.5, 1.5, False),  # bad answer more likely: the pessimistic unclipped term, pushed down
    ],
)
def test_clipping_on_both_sides(advantage, ratio, value, clipped):
    old = -1.0
    parts, grad = _loss([[old + math.log(ratio)]], [[old]], [[old]], [advantage], [[True]])
    assert parts.loss.item() == pytest.approx(value, rel=1e-5)
    assert parts.clipped_tokens == int(clipped)
    if clipped:
        assert grad.item() == 0.0
    else:  # d(-ratio * A)/dlogp = -ratio * A: descent raises logp for A > 0, lowers it for A < 0
        assert grad.item() == pytest.approx(-ratio * advantage, rel=1e-5)


def test_k3_kl_value_and_its_gradient_pulls_toward_the_reference():
    logp, ref = math.log(0.5), math.log(0.25)
    expected = 0.5 - math.log(0.5) - 1  # exp(ref - logp) - (ref - logp) - 1
    parts, grad = _loss([[logp]], [[logp]], [[ref]], [0.0], [[True]], kl_beta=0.1)
    assert parts.loss.item() == pytest.approx(0.1 * expected, rel=1e-5)
    assert grad.item() == pytest.approx(0.1 * (1 - 0.5), rel=1e-5)  # > 0: descent lowers logp toward ref
    _, grad_below = _loss([[ref]], [[ref]], [[logp]], [0.0], [[True]], kl_beta=0.1)
    assert grad_below.item() < 0  # below the reference: descent raises logp
    assert k3_kl(torch.tensor([[logp]]), torch.tensor([[ref]]), torch.tensor([[True]])) == pytest.approx(
        expected
    )


def test_masked_tokens_add_nothing():
    logp = [[-1.0, -2.0], [-0.3, -0.4]]
    parts, grad = _loss(
        logp,
        [[-1.5, -2.0], [-0.3, -0.9]],
        [[0.0, 0.0], [0.0, 0.0]],
        [2.0, -3.0],
        [[True, True], [False, False]],
        kl_beta=0.5,
    )
    alone, _ = _loss(logp[:1], [[-1.5, -2.0]], [[0.0, 0.0]], [2.0], [[True, True]], kl_beta=0.5)
    assert parts.loss.item() == pytest.approx(alone.loss.item())
    assert grad[1].abs().sum() == 0


# Rewards and which rows can be scored ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["B", "b.", "B. table", "A", "B) table", "The answer is B", "", "E"])
def test_multiple_choice_reward_is_the_official_score_plus_format(text, processor):
    ex = rl.build_rl_example(_mc_row(0), TIMES, 1.0, processor)
    parts = rl.score_completion(ex, text, "plain", format_weight=0.5)
    assert parts.accuracy == score_official("object_rel_distance", text, "B", "B")
    assert parts.format == float(official_parse(text).upper() in "ABCD" and official_parse(text) != "")
    assert parts.total == pytest.approx(parts.accuracy + 0.5 * parts.format)


@pytest.mark.parametrize(
    "text, fmt", [("4", 1), ("3.5 chairs", 1), ("5", 1), ("40", 1), ("four", 0), ("nan", 0), ("", 0)]
)
def test_numeric_reward_is_mean_relative_accuracy_plus_format(text, fmt, processor):
    ex = rl.build_rl_example(_count_row(0), TIMES, 1.0, processor)
    parts = rl.score_completion(ex, text, "plain", format_weight=0.25)
    assert parts.accuracy == score_official("object_counting", text, "4")
    assert parts.format == fmt
    assert parts.total == pytest.approx(parts.accuracy + 0.25 * fmt)
    if text == "5":  # relative error 0.25: thresholds 0.50 ... 0.75 pass
        assert parts.accuracy == pytest.approx(0.6)


@pytest.mark.parametrize(
    "text, accuracy, fmt",
    [
        ("<think>the table is nearest</think><answer>B</answer>", 1.0, 1.0),
        ("<think>\nhmm\n</think>\n<answer> C </answer>", 0.0, 1.0),  # well formed, wrong
        ("<think></think><answer>B</answer>", 1.0, 0.0),  # right, but no reasoning
        ("<think>x</think><answer>table</answer>", 0.0, 0.0),  # not a letter
        ("B", 0.0, 0.0),  # the plain answer earns nothing in the think form
        ("<answer>B</answer>", 0.0, 0.0),
        ("<think>x</think><answer>B</answer> extra", 0.0, 0.0),
    ],
)
def test_think_form_scores_only_the_answer_tag(text, accuracy, fmt, processor):
    ex = rl.build_rl_example(_mc_row(0), TIMES, 1.0, processor, answer_form="think")
    parts = rl.score_completion(ex, text, "think", format_weight=1.0)
    assert (parts.accuracy, parts.format, parts.total) == (accuracy, fmt, accuracy + fmt)


def test_think_form_replaces_the_answer_instruction_of_the_shared_prompt(processor):
    plain = rl.build_rl_example(_count_row(0), TIMES, 1.0, processor)
    think = rl.build_rl_example(_count_row(0), TIMES, 1.0, processor, answer_form="think")
    assert plain.user_message == build_user_message(
        _count_row(0)["question"], timestamps=TIMES, duration_s=1.0
    )
    assert plain.user_message.endswith(NUMERIC_POST_PROMPT)
    assert think.user_message == plain.user_message.removesuffix(NUMERIC_POST_PROMPT) + THINK_INSTRUCTION


@pytest.mark.parametrize(
    "row, reason",
    [
        (_mc_row(0, question_type="object_height_ranking"), "unknown question_type"),
        (_mc_row(0, question_type=None), "no question_type"),
        (_mc_row(0, question=""), "no question text"),
        (_mc_row(0, ground_truth=None, mc_answer=None), "no ground_truth"),
        (_mc_row(0, options=None), "without options"),
        (_mc_row(0, mc_answer="E", ground_truth="E"), "not the letter of one of the options"),
        (_mc_row(0, mc_answer=None, ground_truth="table"), "not the letter of one of the options"),
        (_count_row(0, ground_truth="many"), "not a number"),
        (_count_row(0, ground_truth="0"), "not a positive number"),
        (_count_row(0, options=["A. 1", "B. 2"]), "numeric question_type 'object_counting' with options"),
    ],
)
def test_rows_without_a_computable_reward_are_skipped_with_the_reason(row, reason, processor):
    assert reason in rl.reward_skip_reason(row)
    kept, skipped = rl.plan_rl_rows([_mc_row(1), row, _count_row(2)])
    assert [r["id"] for r in kept] == ["mc1", "n2"] and skipped[0]["id"] == row["id"]
    assert reason in skipped[0]["reason"]
    with pytest.raises(ValueError, match=reason.split(" '")[0]):
        rl.build_rl_example(row, TIMES, 1.0, processor)


def test_official_vsibench_rows_and_every_generated_question_type_are_scorable():
    from datagen.tasks import TASKS

    # VSI-Bench multiple choice: the letter in ground_truth, no mc_answer; options from a Ray batch.
    assert rl.reward_skip_reason(_mc_row(0, mc_answer=None, options=np.array(OPTIONS, dtype=object))) is None
    for task in TASKS.values():
        for qt in task.question_types:
            row = _count_row(0, question_type=qt) if is_numeric_question(qt) else _mc_row(0, question_type=qt)
            assert rl.reward_skip_reason(row) is None, qt


# The tiny model: layout, log-probs, rollouts, the reference ---------------------------------------------


def _features(n: int, frames: int = 2, seed: int = 0) -> VideoFeatures:
    cfg = get_preset("tiny")
    grid = cfg.cut3r_image_size // cfg.cut3r.patch_size
    rng = np.random.default_rng(seed)

    def arrays(shape):
        return [rng.normal(size=(frames, *shape)).astype(np.float32) for _ in range(n)]

    return VideoFeatures.from_videos(
        arrays((cfg.vision_grid**2, cfg.vision_dim)),
        arrays((1, cfg.spatial_dim)),
        arrays((grid * grid, cfg.spatial_dim)),
    )


def _tiny_model() -> Vlm3rForConditionalGeneration:
    """The tiny VLM without the frozen encoders (their outputs are the features), fp32, eval mode."""
    model = Vlm3rForConditionalGeneration.from_config(
        get_preset("tiny"), components=[c for c in COMPONENTS if c not in ("vision_tower", "cut3r")]
    )
    return model.eval()


@pytest.fixture(scope="module")
def processor():
    return Vlm3rProcessor.from_config(get_preset("tiny"))


def _answer_ids(processor, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion ids (answer + <|im_end|>, then padding) and their mask, as a sampler returns them."""
    rows = [processor.tokenizer.encode(a + "<|im_end|>", add_special_tokens=False) for a in answers]
    ids = torch.full((len(rows), max(map(len, rows)) + 2), processor.pad_token_id)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    return ids, completion_mask(ids, processor.eos_token_id)


def test_completions_are_laid_out_exactly_as_build_batch_lays_out_answers(processor):
    messages = [
        rl.build_rl_example(r, TIMES, 1.0, processor).user_message
        for r in (_mc_row(0), _count_row(1))
    ]
    answers = ["B", "12.5 meters"]
    ids, mask = _answer_ids(processor, answers)
    assert mask.sum(1).tolist() == [
        len(processor.tokenizer.encode(a + "<|im_end|>", add_special_tokens=False)) for a in answers
    ]
    got = teacher_forced_batch(processor.build_batch(messages), ids, mask, processor.pad_token_id)
    expected = processor.build_batch(messages, answers)
    for name in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_completion_logprobs_equal_the_full_logits_at_the_answer_positions(processor):
    model = _tiny_model()
    messages = [
        rl.build_rl_example(r, TIMES, 1.0, processor).user_message
        for r in (_mc_row(0), _count_row(1))
    ]
    ids, mask = _answer_ids(processor, ["C", "3"])
    features = _features(2)
    prompt = processor.build_batch(messages)
    with torch.no_grad():
        got = rl.completion_logprobs(model, prompt, ids, mask, features, temperature=0.7)
        full = processor.build_batch(messages, ["C", "3"])
        logits = model(full.input_ids, full.attention_mask, features=features).logits  # (2, L', V)
    video_tokens = 2 * model.config.tokens_per_frame
    for b in range(2):
        n = int(mask[b].sum())
        end = int(full.attention_mask[b].sum()) - 1 + video_tokens  # merged length of row b
        expected = torch.log_softmax(
            logits[b, end - n - 1 : end - 1] / 0.7, dim=-1
        )  # predicts the last n tokens
        torch.testing.assert_close(got[b, :n], expected.gather(1, ids[b, :n, None])[:, 0])
        assert got[b, n:].abs().sum() == 0


def test_generation_never_emits_the_video_placeholder(processor):
    model = _tiny_model()
    placeholder = model.config.image_token_id
    with torch.no_grad():  # make <image> the most likely token everywhere
        model.language_model.lm_head.weight[placeholder] = model.language_model.model.norm.weight * 50
    prompt = processor.build_batch(
        [rl.build_rl_example(_mc_row(0), TIMES, 1.0, processor).user_message]
    )
    ids = model.generate(prompt.input_ids, prompt.attention_mask, features=_features(1), max_new_tokens=4)
    assert ids.numel() > 0 and not (ids == placeholder).any()


def test_rollouts_are_group_major_with_their_sampling_logprobs(processor):
    model = _tiny_model()
    rl.prepare_policy(model)
    config = rl.GRPOConfig(group_size=3, max_new_tokens=5, temperature=0.8, micro_batch_size=4)
    examples = [rl.build_rl_example(r, TIMES, 1.0, processor) for r in (_mc_row(0), _count_row(1))]
    prompt, features = processor.build_batch([e.user_message for e in examples]), _features(2)
    torch.manual_seed(0)
    out = rl.HFRolloutBackend(model).sample(prompt, features, config)
    assert out.completion_ids.shape[0] == 6 and out.completion_ids.shape[1] <= 5
    assert torch.equal(out.mask, completion_mask(out.completion_ids, processor.eos_token_id))
    assert (out.logprobs[~out.mask] == 0).all() and (out.logprobs[out.mask] < 0).all()
    # Row b * G + g is sample g of prompt b: its log-probs are those of prompt b's video and text.
    index = torch.tensor([0, 0, 0, 1, 1, 1])
    rows, videos = select_prompts(prompt, features, index)
    with torch.no_grad():
        again = rl.completion_logprobs(model, rows, out.completion_ids, out.mask, videos, 0.8)
    torch.testing.assert_close(out.logprobs, again)


def _perturb_adapter(model) -> None:
    """Non-zero LoRA B weights (seeded): the adapter changes the model's outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))


def test_the_reference_is_the_model_before_prepare_policy(processor):
    """A supervised model (LoRA with non-zero weights) -> prepare_policy: the fresh adapter starts at
    the reference, and the reference (adapter disabled) is the supervised model, merged."""
    model = _tiny_model()
    model.apply_lora()
    _perturb_adapter(model)
    messages = [rl.build_rl_example(_mc_row(0), TIMES, 1.0, processor).user_message]
    ids, mask = _answer_ids(processor, ["B"])
    args = (processor.build_batch(messages), ids, mask, _features(1), 1.0)
    with torch.no_grad():
        supervised = rl.completion_logprobs(model, *args)
        rl.prepare_policy(model)
        policy = rl.completion_logprobs(model, *args)
    with rl.reference_policy(model):
        reference = rl.completion_logprobs(model, *args)
    torch.testing.assert_close(policy, supervised, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reference, supervised, atol=1e-5, rtol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # fusion, projector, newline frozen


# GRPO steps on the tiny model --------------------------------------------------------------------------

TOY_ROWS = [_mc_row(0), _mc_row(1), _count_row(2), _count_row(3)]  # answers: B, B, 4, 4
TEMPERATURE = 0.5


@pytest.fixture(scope="module")
def warm(processor):
    """The tiny model after a short supervised warm-up on the toy set, as GRPO follows SFT: it answers
    the multiple-choice questions with a letter and the counting ones with a digit, none of them
    the right one more than the others (A/C, B/D, 2/5, 3/6). The frozen random LM head of ``tiny``
    bounds how peaked its outputs can get, so the steps sample at temperature 0.5."""
    model = _tiny_model()
    torch.manual_seed(0)  # the adapter's init
    model.apply_lora()
    examples = [rl.build_rl_example(r, TIMES, 1.0, processor) for r in TOY_ROWS]
    features = _features(len(examples))
    index = torch.arange(4).repeat_interleave(2)
    batch = processor.build_batch(
        [examples[i].user_message for i in index], ["A", "C", "B", "D", "2", "5", "3", "6"]
    )
    _, videos = select_prompts(batch, features, index)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, features=videos).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, examples, features


def _policy(warm, seed: int = 0) -> Vlm3rForConditionalGeneration:
    torch.manual_seed(seed)  # the fresh adapter's init and the sampling
    model = copy.deepcopy(warm[0])
    rl.prepare_policy(model)
    return model


def _first_token_probability(model, processor, examples, features, answer: str) -> torch.Tensor:
    """P(first answer token = ``answer``) under the sampling policy, per example: (B,)."""
    ids, mask = _answer_ids(processor, [answer] * len(examples))
    prompt = processor.build_batch([e.user_message for e in examples])
    with torch.no_grad():
        return rl.completion_logprobs(model, prompt, ids, mask, features, TEMPERATURE)[:, 0].exp()


def _prefers(letter: str):
    def reward(example, text):
        hit = float(bool(example.options) and official_parse(text) == letter)
        return rl.RewardParts(accuracy=hit, format=0.0, total=hit)

    return reward


def test_degenerate_groups_are_counted_and_carry_no_weight(warm, processor):
    model, (examples, features) = _policy(warm), warm[1:]
    _perturb_adapter(model)  # the policy moves away from the reference: every token has a KL term
    config = rl.GRPOConfig(
        group_size=8, max_new_tokens=3, temperature=TEMPERATURE, micro_batch_size=32, kl_beta=0.5
    )
    batch = rl.collect_rollouts(
        model, processor, examples, features, config, rl.HFRolloutBackend(model), _prefers("C")
    )
    assert batch.degenerate.tolist() == [False, False, True, True]  # counting rows always earn 0

    class Recorder:
        losses: list[float] = []

        def forward(self, **inputs):
            return model(**inputs)

        def backward(self, loss, last):
            self.losses.append(loss.item())

        def step(self):
            return None

    rl.update_policy(model, batch, config, recorder := Recorder())
    # One update per rollout: ratio 1, so every token adds -A + beta * k3; only the tokens of the
    # non-degenerate groups count, in the sum and in the token count.
    old, ref = batch.rollouts.logprobs, batch.ref_logprobs  # (N, K)
    per_token = -batch.advantages.reshape(-1, 1) + 0.5 * (torch.exp(ref - old) - (ref - old) - 1)
    weight = batch.rollouts.mask & ~batch.degenerate.repeat_interleave(8)[:, None]
    assert batch.rollouts.mask[16:].sum() > 0 and k3_kl(old[16:], ref[16:], batch.rollouts.mask[16:]) > 0.01
    assert sum(recorder.losses) == pytest.approx((per_token[weight].sum() / weight.sum()).item(), rel=1e-4)

    before = [p.detach().clone() for p in model.trainable_parameters()]
    result = rl.grpo_step(
        model,
        processor,
        examples,
        features,
        config,
        rl.HFRolloutBackend(model),
        rl.torch_policy_update(model, config),
        lambda e, t: rl.RewardParts(1.0, 1.0, 1.5),
    )
    assert (result.degenerate_fraction, result.updated, result.loss, result.reward_mean) == (
        1.0,
        False,
        0.0,
        1.5,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.trainable_parameters(), strict=True))


def test_grpo_raises_the_probability_of_the_preferred_option(warm, processor):
    model, (examples, features) = _policy(warm), warm[1:]
    config = rl.GRPOConfig(
        group_size=8, max_new_tokens=3, temperature=TEMPERATURE, lr=3e-3, micro_batch_size=32
    )
    backend, update = rl.HFRolloutBackend(model), rl.torch_policy_update(model, config)
    before = _first_token_probability(model, processor, examples, features, "D")[
        :2
    ]  # the multiple-choice rows
    results = [
        rl.grpo_step(model, processor, examples, features, config, backend, update, _prefers("D"))
        for _ in range(8)
    ]
    after = _first_token_probability(model, processor, examples, features, "D")[:2]
    print(
        f"P(D) at T={TEMPERATURE}: {before.tolist()} -> {after.tolist()}; "
        f"reward {[round(r.reward_mean, 3) for r in results]}"
    )
    assert (after > 0.5).all() and (after > 5 * before).all()
    assert all(r.degenerate_fraction >= 0.5 for r in results)  # the counting groups never score
    assert results[-1].kl > 0 and all(
        r.clip_fraction == 0 for r in results
    )  # one update per rollout: ratio 1


def _greedy_reward(model, processor, examples, features, config) -> float:
    """Mean official reward of the greedy answers (no sampling noise)."""
    prompt = processor.build_batch([e.user_message for e in examples])
    ids = model.generate(prompt.input_ids, prompt.attention_mask, features=features, max_new_tokens=3)
    texts = processor.batch_decode(ids)
    return float(
        np.mean(
            [
                rl.score_completion(e, t, "plain", config.format_weight).total
                for e, t in zip(examples, texts, strict=True)
            ]
        )
    )


def test_grpo_raises_the_mean_official_reward_on_a_toy_set(warm, processor):
    model, (examples, features) = _policy(warm), warm[1:]
    config = rl.GRPOConfig(
        group_size=8, max_new_tokens=3, temperature=TEMPERATURE, lr=3e-3, micro_batch_size=32
    )
    backend, update = rl.HFRolloutBackend(model), rl.torch_policy_update(model, config)
    greedy_before = _greedy_reward(model, processor, examples, features, config)
    p_before = _first_token_probability(model, processor, examples, features, "B")[:2]
    results = [rl.grpo_step(model, processor, examples, features, config, backend, update) for _ in range(8)]
    greedy_after = _greedy_reward(model, processor, examples, features, config)
    p_after = _first_token_probability(model, processor, examples, features, "B")[:2]
    rewards = [r.reward_mean for r in results]
    print(
        f"rollout reward {[round(r, 3) for r in rewards]}; greedy {greedy_before:.3f} -> {greedy_after:.3f}; "
        f"P(B) {p_before.tolist()} -> {p_after.tolist()}"
    )
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.1
    assert greedy_after > greedy_before
    assert (p_after > 2 * p_before).all()
    assert set(results[0].reward_by_type) == {"object_counting", "object_rel_distance"}
    assert results[0].mean_completion_tokens >= 2  # an answer and <|im_end|>
    flat = results[-1].to_dict()
    assert flat["reward/object_rel_distance/count"] == 16 and flat["updated"] is True


# DeepSpeed: the update injected as an engine -----------------------------------------------------------


@pytest.fixture(scope="module")
def gloo_rank():
    """torch.distributed with one gloo rank, as DeepSpeed needs (removed after the module)."""
    from vlm3r_core.training import single_process_group

    with single_process_group():
        yield


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_update_equals_the_plain_torch_update(gloo_rank, warm, processor, stage):
    """Three micro-batches accumulated by the engine (ZeRO-2 / ZeRO-3) give the same weights as
    plain torch; under ZeRO-3 the rollouts (generation with gathered weights, reference with the
    adapter disabled) are those of the unwrapped model."""
    from vlm3r_core.training import TrainConfig, deepspeed_config, import_deepspeed

    deepspeed = import_deepspeed()
    model, (examples, features) = _policy(warm), warm[1:]
    config = rl.GRPOConfig(
        group_size=4, max_new_tokens=3, temperature=TEMPERATURE, lr=1e-3, micro_batch_size=6
    )
    batch = rl.collect_rollouts(
        model, processor, examples[:2], _first(features, 2), config, rl.HFRolloutBackend(model), _prefers("D")
    )
    plain, wrapped = copy.deepcopy(model), copy.deepcopy(model)
    torch_stats = rl.update_policy(plain, batch, config, rl.torch_policy_update(plain, config))
    ds_config = deepspeed_config(TrainConfig(qa_uri="-", tokens_uri="-", out_uri="-", zero_stage=stage))
    optimizer = torch.optim.AdamW(wrapped.trainable_parameters(), lr=config.lr, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=wrapped, optimizer=optimizer, config=ds_config)
    update = rl.DeepSpeedPolicyUpdate(engine)
    ds_stats = rl.update_policy(engine.module, batch, config, update)
    assert ds_stats.loss == pytest.approx(torch_stats.loss, abs=1e-6)
    assert ds_stats.grad_norm == pytest.approx(torch_stats.grad_norm, rel=1e-5)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        for (name, a), b in zip(plain.named_parameters(), engine.module.parameters(), strict=True):
            torch.testing.assert_close(b.detach(), a.detach(), atol=1e-6, rtol=1e-5, msg=name)
    if stage == 3:
        rollouts = []
        for policy, backend in (
            (engine.module, rl.HFRolloutBackend(engine.module, update.gathered_parameters)),
            (plain, rl.HFRolloutBackend(plain)),
        ):
            torch.manual_seed(1)
            rollouts.append(
                rl.collect_rollouts(policy, processor, examples[:2], _first(features, 2), config, backend)
            )
        assert torch.equal(rollouts[0].rollouts.completion_ids, rollouts[1].rollouts.completion_ids)
        torch.testing.assert_close(rollouts[0].rollouts.logprobs, rollouts[1].rollouts.logprobs)
        torch.testing.assert_close(rollouts[0].ref_logprobs, rollouts[1].ref_logprobs)


def _first(features: VideoFeatures, n: int) -> VideoFeatures:
    return VideoFeatures(
        *(
            x[:n]
            for x in (
                features.vision_features,
                features.camera_tokens,
                features.patch_tokens,
                features.frame_mask,
            )
        )
    )


def test_a_tuned_policy_saves_and_loads_with_the_merged_llm_and_its_adapter(processor, tmp_path):
    model = _tiny_model()
    model.apply_lora()
    _perturb_adapter(model)  # the supervised adapter, merged by prepare_policy
    rl.prepare_policy(model)
    _perturb_adapter(model)  # as if GRPO had trained the new one
    model.save_pretrained(str(tmp_path / "model"), processor)
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "model")).eval()
    messages = [rl.build_rl_example(_mc_row(0), TIMES, 1.0, processor).user_message]
    ids, mask = _answer_ids(processor, ["B"])
    args = (processor.build_batch(messages), ids, mask, _features(1), 1.0)
    with torch.no_grad():
        torch.testing.assert_close(
            rl.completion_logprobs(loaded, *args), rl.completion_logprobs(model, *args)
        )
        with rl.reference_policy(model), rl.reference_policy(loaded):
            torch.testing.assert_close(
                rl.completion_logprobs(loaded, *args), rl.completion_logprobs(model, *args)
            )


# Data-parallel ranks -----------------------------------------------------------------------------------


def _result(loss, rewards_by_type: dict[str, list[float]], kl, tokens, degenerate, groups, updated=True):
    """A GRPOStepResult of one rank from its samples' rewards, as summarize_rollouts reports them."""
    values = [r for v in rewards_by_type.values() for r in v]
    return rl.GRPOStepResult(
        loss=loss, kl=kl, clip_fraction=0.0, reward_mean=float(np.mean(values)), reward_std=float(np.std(values)),
        accuracy_mean=float(np.mean(values)), format_mean=1.0,
        reward_by_type={qt: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)}
                        for qt, v in rewards_by_type.items()},
        mean_completion_tokens=tokens, degenerate_fraction=degenerate, num_groups=groups, updated=updated,
        grad_norm=0.5,
    )  # fmt: skip


def test_merged_step_results_pool_the_ranks_samples_exactly():
    a = _result(0.2, {"object_counting": [0.0, 1.0, 0.5, 0.5]}, kl=0.01, tokens=2.0, degenerate=0.0, groups=1)
    b = _result(0.4, {"object_counting": [1.5, 1.5], "route_plan": [0.0, 1.0]}, kl=0.04, tokens=4.0,
                degenerate=1.0, groups=1)  # fmt: skip
    merged = rl.merge_step_results([a, b])
    every = [0.0, 1.0, 0.5, 0.5, 1.5, 1.5, 0.0, 1.0]
    counting = [0.0, 1.0, 0.5, 0.5, 1.5, 1.5]
    assert merged.reward_mean == pytest.approx(np.mean(every)) and merged.reward_std == pytest.approx(np.std(every))
    assert merged.reward_by_type["object_counting"] == pytest.approx(
        {"mean": np.mean(counting), "std": np.std(counting), "count": 6}
    )
    assert merged.reward_by_type["route_plan"] == pytest.approx({"mean": 0.5, "std": 0.5, "count": 2})
    assert merged.kl == pytest.approx((0.01 * 8 + 0.04 * 16) / 24)  # weighted by completion tokens
    assert merged.mean_completion_tokens == pytest.approx(3.0)
    assert (merged.loss, merged.degenerate_fraction, merged.num_groups) == (pytest.approx(0.3), 0.5, 2)
    assert merged.updated and merged.grad_norm == 0.5
    assert rl.merge_step_results([a]) == a


def _rank_step(rank: int, port: int, out: str) -> None:
    """One GRPO step on rank ``rank`` of a 2-rank gloo group with a DeepSpeed ZeRO-2 engine; rank 1's
    reward is constant, so all its groups are degenerate. Saves what the test checks."""
    import os

    from vlm3r_core.training import TrainConfig, deepspeed_config, import_deepspeed

    deepspeed = import_deepspeed()

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)  # the same adapter init on both ranks
    model, processor = _tiny_model(), Vlm3rProcessor.from_config(get_preset("tiny"))
    rl.prepare_policy(model)
    config = rl.GRPOConfig(group_size=4, max_new_tokens=4, micro_batch_size=4, lr=1e-2)
    ds_config = deepspeed_config(TrainConfig(qa_uri="-", tokens_uri="-", out_uri="-"))
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    torch.manual_seed(1 + rank)  # different samples on each rank
    examples = [rl.build_rl_example(r, TIMES, 1.0, processor) for r in (_mc_row(rank), _count_row(rank))]

    def reward(example, text):
        value = 1.0 if rank == 1 else float(len(text) % 3)  # rank 0: rewards that differ
        return rl.RewardParts(accuracy=value, format=0.0, total=value)

    update = rl.DeepSpeedPolicyUpdate(engine)
    result = rl.grpo_step(engine.module, processor, examples, _features(2, seed=rank), config,
                          rl.HFRolloutBackend(engine.module), update, reward)  # fmt: skip
    adapter = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
    torch.save({"result": result, "adapter": adapter}, os.path.join(out, f"rank-{rank}.pt"))


def test_ranks_agree_to_update_when_only_one_has_signal(tmp_path):
    """Without the agreement rank 0 would wait forever in its gradient reduction for rank 1, which
    skipped its update; with it both update (rank 1 with weight 0) and stay identical replicas."""
    import torch.multiprocessing as mp

    from serve_apps.ports import free_loopback_port

    context = mp.start_processes(_rank_step, args=(free_loopback_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + 600
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish their step within 600 s (a rank waits for the other)")
    ranks = [torch.load(tmp_path / f"rank-{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["result"].degenerate_fraction < 1 and ranks[1]["result"].degenerate_fraction == 1.0
    assert [r["result"].updated for r in ranks] == [True, True]
    torch.testing.assert_close(ranks[0]["adapter"], ranks[1]["adapter"], atol=0, rtol=0)
    assert any(p.abs().sum() > 0 for n, p in ranks[0]["adapter"].items() if "lora_B" in n)  # moved from 0
