"""Training data: conversations joined to their precomputed token rows, and the batch collator.

The training set has two inputs:

- training conversations in LLaVA form (``id, video, conversations: [{from: human, value:
  "<image>\\n..."}, {from: gpt, value}], question_type, data_source``), made by
  ``jobs/generate_qa.py`` with the shared prompt builder, plus the join key ``video_id``
  (``"<dataset>/<scene_id>"``);
- token shards (:mod:`vlm3r_core.tokens`), one row per video: CUT3R ``camera_tokens`` (T, 1, C),
  ``patch_tokens`` (T, N, C) and the SigLIP ``vision_features`` (T, P, Cv).

The join is a broadcast join: the conversations (text, small) are indexed by ``video_id`` and
sent to every Ray Data task, and each streamed token row (large) becomes one row per
conversation of its video (:func:`join_conversations`). A hash join would shuffle the token rows
through the object store; this way they are read once and streamed to the trainers.

The collator (:class:`TrainCollator`) turns a batch of joined rows into model inputs: the chat
text with answer-only labels comes from :meth:`Vlm3rProcessor.build_batch` (which uses
:mod:`vlm3r_core.prompting`), the token arrays are padded over frames into
:class:`VideoFeatures` with a frame mask.

Shapes: ``B`` samples, ``T`` frames, ``N`` CUT3R patches, ``P`` SigLIP patches, ``C`` CUT3R
channels, ``Cv`` SigLIP channels, ``L`` text tokens.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlm3r_core import storage
from vlm3r_core.prompting import VIDEO_PLACEHOLDER
from vlm3r_core.tokens import read_encoder_info, read_token_table
from vlm3r_core.vlm import VideoFeatures, Vlm3rProcessor

TOKEN_COLUMNS = ("camera_tokens", "patch_tokens", "vision_features")
QA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class TrainingExample:
    """One supervised exchange: the user turn (with ``<image>``) and the assistant answer."""

    id: str
    video_id: str
    user_message: str
    answer: str


def _video_id(row: dict) -> str:
    if row.get("video_id"):
        return str(row["video_id"])
    if row.get("dataset") and row.get("scene_name"):
        return f"{row['dataset']}/{row['scene_name']}"
    raise ValueError(f"training row {row.get('id')!r} has no video_id (nor dataset + scene_name) to join tokens on")


def example_from_row(row: dict) -> TrainingExample:
    """Validates one LLaVA-form training row: exactly one human turn with ``<image>``, then one answer."""
    row_id = str(row.get("id", "?"))
    turns = row.get("conversations")
    if turns is None or len(turns) != 2:
        n = "no" if turns is None else len(turns)
        raise ValueError(f"training row {row_id!r}: expected one human and one gpt turn, found {n} turns")
    human, gpt = turns
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise ValueError(f"training row {row_id!r}: turns must be human then gpt, got {human.get('from')!r}, {gpt.get('from')!r}")
    if str(human.get("value", "")).count(VIDEO_PLACEHOLDER) != 1:
        raise ValueError(f"training row {row_id!r}: the human turn must contain {VIDEO_PLACEHOLDER!r} exactly once")
    if not str(gpt.get("value", "")).strip():
        raise ValueError(f"training row {row_id!r}: empty answer")
    return TrainingExample(id=row_id, video_id=_video_id(row), user_message=str(human["value"]), answer=str(gpt["value"]))


def _read_rows(uri: str) -> list[dict]:
    if uri.endswith(".jsonl"):
        return storage.read_jsonl(uri)
    if uri.endswith(".json"):
        rows = storage.read_json(uri)
        if not isinstance(rows, list):
            raise ValueError(f"{uri}: expected a JSON list of training rows")
        return rows
    if uri.endswith(".parquet"):
        return storage.read_parquet(uri).to_pylist()
    raise ValueError(f"{uri}: training conversations must be .jsonl, .json or .parquet")


def read_training_examples(uri: str) -> list[TrainingExample]:
    """Reads training conversations from a file or a folder of ``.jsonl``/``.json``/``.parquet`` files.

    Raises:
        ValueError: a malformed row (the message names it), duplicate ids, or no rows at all.
    """
    if posixpath.splitext(uri.rstrip("/"))[1] in QA_SUFFIXES:
        files = [uri]
    else:
        files = [f for f in storage.list_files(uri) if f.endswith(QA_SUFFIXES)]
    examples = [example_from_row(row) for f in files for row in _read_rows(f)]
    if not examples:
        raise ValueError(f"{uri}: no training conversations found")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ValueError(f"{uri}: duplicate training row id {ex.id!r}")
        seen.add(ex.id)
    return examples


@dataclass(frozen=True)
class JoinPlan:
    """Which examples can be trained on, and which cannot with the reason."""

    examples: list[TrainingExample]
    skipped: list[dict]  # {id, video_id, reason}

    def index(self) -> dict[str, list[tuple[str, str, str]]]:
        """``video_id -> [(id, user_message, answer), ...]`` for :func:`join_conversations`."""
        out: dict[str, list[tuple[str, str, str]]] = {}
        for ex in self.examples:
            out.setdefault(ex.video_id, []).append((ex.id, ex.user_message, ex.answer))
        return out


def plan_join(examples: Sequence[TrainingExample], token_video_ids: Sequence[str]) -> JoinPlan:
    """Splits examples into those whose video has a token row and those skipped (with the reason)."""
    available = set(token_video_ids)
    kept = [ex for ex in examples if ex.video_id in available]
    skipped = [
        {"id": ex.id, "video_id": ex.video_id, "reason": "no token row for this video in the token shards"}
        for ex in examples
        if ex.video_id not in available
    ]
    return JoinPlan(examples=kept, skipped=skipped)


def plan_training_join(qa_uri: str, tokens_uri: str) -> JoinPlan:
    """Reads the conversations and the token shards' video ids, and plans the join.

    Raises:
        ValueError: the shards hold no ``vision_features`` (training runs no frozen encoder), a
            malformed conversation, or no conversation with tokens at all.
    """
    if not read_encoder_info(tokens_uri).with_vision_features:
        raise ValueError(
            f"{tokens_uri}: the token shards have no vision_features; training runs no frozen encoder, "
            "precompute the tokens with the SigLIP features (precompute_tokens.py --with-vision-features)"
        )
    video_ids = read_token_table(tokens_uri, columns=["video_id"]).column("video_id").to_pylist()
    plan = plan_join(read_training_examples(qa_uri), video_ids)
    if not plan.examples:
        raise ValueError(f"no training conversation of {qa_uri} has a token row in {tokens_uri}")
    return plan


def join_conversations(batch: dict[str, np.ndarray], index: dict[str, list[tuple[str, str, str]]]) -> dict[str, np.ndarray]:
    """Ray Data stage: token rows (one per video) in, one row per conversation of that video out.

    Args:
        batch: numpy batch of token rows with ``video_id`` and the token columns present in the
            shards (``camera_tokens`` (V, T, 1, C), ``patch_tokens`` (V, T, N, C),
            ``vision_features`` (V, T, P, Cv); object arrays when T differs between videos).
        index: ``video_id -> [(id, user_message, answer)]`` from :meth:`JoinPlan.index`.

    Returns:
        ``id, video_id, user_message, answer`` and the token columns, one row per conversation.
        Videos without conversations produce no rows.
    """
    video_ids = [str(v) for v in batch["video_id"]]
    counts = np.array([len(index.get(v, ())) for v in video_ids], dtype=np.int64)
    exchanges = [ex for v in video_ids for ex in index.get(v, ())]
    out = {
        "id": np.array([ex[0] for ex in exchanges], dtype=object),
        "video_id": np.repeat(np.array(video_ids, dtype=object), counts),
        "user_message": np.array([ex[1] for ex in exchanges], dtype=object),
        "answer": np.array([ex[2] for ex in exchanges], dtype=object),
    }
    for name in TOKEN_COLUMNS:
        if name in batch:
            out[name] = np.repeat(batch[name], counts, axis=0)
    return out


@dataclass
class TrainBatch:
    """Model inputs for one micro-batch.

    Attributes:
        input_ids: (B, L) int64, right-padded chat text.
        attention_mask: (B, L) int64.
        labels: (B, L) int64, -100 everywhere except the answer tokens.
        features: the videos' precomputed tokens, padded over frames with ``frame_mask``.
        num_tokens: LLM sequence tokens of the batch: text tokens plus the video tokens that
            replace each ``<image>`` (padding excluded).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    features: VideoFeatures
    num_tokens: int

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            features=self.features.to(device),
            num_tokens=self.num_tokens,
        )


class TrainCollator:
    """Joined rows (numpy batch) -> :class:`TrainBatch`.

    Args:
        processor: the VLM processor; its ``build_batch`` renders the shared ChatML prompt and
            masks everything but the answer.
        dtype: dtype of the token arrays fed to the model (shards are fp16): float32 on CPU,
            bfloat16 on GPU.
    """

    def __init__(self, processor: Vlm3rProcessor, dtype: torch.dtype):
        self.processor = processor
        self.dtype = dtype

    def __call__(self, rows: dict[str, np.ndarray]) -> TrainBatch:
        if "vision_features" not in rows:
            raise ValueError(
                "the token rows have no vision_features: training runs no frozen encoder, so the "
                "token shards must be precomputed with the SigLIP features"
            )
        text = self.processor.build_batch(list(rows["user_message"]), answers=list(rows["answer"]))
        features = VideoFeatures.from_videos(
            list(rows["vision_features"]), list(rows["camera_tokens"]), list(rows["patch_tokens"]), dtype=self.dtype
        )
        frames = int(features.frame_mask.sum())
        video_tokens = frames * self.processor.config.tokens_per_frame - len(rows["user_message"])
        return TrainBatch(
            input_ids=text.input_ids,
            attention_mask=text.attention_mask,
            labels=text.labels,
            features=features,
            num_tokens=int(text.attention_mask.sum()) + video_tokens,
        )


def iterate_batches(
    shard, batch_size: int, seed: int, start_epoch: int = 0, skip_batches: int = 0, shuffle_buffer: int = 0
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Endless stream of numpy batches from a Ray Data shard, epoch after epoch.

    Every epoch is one pass over the shard, shuffled within ``shuffle_buffer`` rows with the seed
    ``seed + epoch``; incomplete last batches are dropped so all workers take the same number of
    batches per epoch (``streaming_split(equal=True)`` gives them equal rows).

    Args:
        shard: a ``ray.data.DataIterator`` (``ray.train.get_dataset_shard``).
        start_epoch, skip_batches: resume position; the first ``skip_batches`` batches of
            ``start_epoch`` are read and dropped, so a resumed run sees the data it had not seen.

    Yields:
        ``(epoch, batch_in_epoch, batch)`` with ``batch_in_epoch`` counted from 1.
    """
    epoch = start_epoch
    while True:
        n = 0
        for n, batch in enumerate(
            shard.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=shuffle_buffer or None,
                local_shuffle_seed=seed + epoch if shuffle_buffer else None,
            ),
            start=1,
        ):
            if epoch == start_epoch and n <= skip_batches:
                continue
            yield epoch, n, batch
        if n == 0:
            raise ValueError(f"the training data shard holds fewer than batch_size={batch_size} rows")
        epoch += 1


class MicroBatchStream:
    """The micro-batches of each optimiser step of one worker, and where in the data it is.

    Args:
        shard: the worker's ``ray.data.DataIterator``.
        collator: rows -> :class:`TrainBatch`.
        batch_size, grad_accum_steps: micro-batch size and micro-batches per step.
        seed, shuffle_buffer: local shuffle of each epoch (see :func:`iterate_batches`).
        position: ``(epoch, batch_in_epoch)`` of the last micro-batch already trained on;
            ``(0, 0)`` for a fresh run.
    """

    def __init__(
        self,
        shard,
        collator: TrainCollator,
        batch_size: int,
        grad_accum_steps: int,
        seed: int,
        shuffle_buffer: int,
        position: tuple[int, int] = (0, 0),
    ):
        self.collator = collator
        self.grad_accum_steps = grad_accum_steps
        self.position = position
        self._batches = iterate_batches(shard, batch_size, seed, position[0], position[1], shuffle_buffer)

    def next_step(self) -> list[TrainBatch]:
        """Collated micro-batches of the next optimiser step; advances :attr:`position`."""
        micro_batches = []
        for _ in range(self.grad_accum_steps):
            epoch, batch_in_epoch, rows = next(self._batches)
            micro_batches.append(self.collator(rows))
            self.position = (epoch, batch_in_epoch)
        return micro_batches
