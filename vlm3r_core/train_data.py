"""Training data: conversations, the token rows of their videos, each worker's share and its batches.

Inputs:

- training conversations, joined to videos by ``video_id`` (``"<dataset>/<scene_id>"``). Rows
  written by ``jobs/generate_qa.py`` carry ``question``, ``options`` and ``answer`` beside the
  LLaVA form (``conversations: [{from: human, value: "<image>\\n..."}, {from: gpt, value}]``);
  training renders their user turn itself, with :meth:`Vlm3rProcessor.user_message` (the model's
  ``PromptConfig``) and the frame times of the video's token row: the call evaluation and serving
  make, so the three see the same prompt. Rows with only the LLaVA form (external data) are used
  as given.
- token shards (:mod:`vlm3r_core.tokens`), one row per video: ``timestamps``, ``duration_s``,
  CUT3R ``camera_tokens`` (T, 1, C), ``patch_tokens`` (T, N, C) and the SigLIP
  ``vision_features`` (T, P, Cv).

On the driver, :func:`plan_training_join` reads the conversations, the shard set's encoder and
which shard holds each video, and the QA manifest; it refuses shards made for another model
preset (preset, image sizes, frame count) and questions made for another frame count, and lists
the conversations whose video has no tokens. :meth:`TrainingData.split` then gives each worker
whole videos, balanced by their conversation counts, and fixes the number of batches every worker
takes per epoch (the smallest share's), so all workers step together.

On each worker, :class:`MicroBatchStream` streams its videos. The order of an epoch is a pure
function of the plan, the seed, the epoch and the rank (:meth:`TrainingData.epoch_samples`): the
videos are permuted, grouped into windows of at least ``shuffle_window`` conversations, and the
conversations of a window are shuffled. A position ``(epoch, batch)`` is therefore all a
checkpoint needs: a resumed run takes exactly the batches the interrupted one took. Tokens are
read one video (one parquet row group) at a time by a background thread ahead of first use and
dropped after their last use in the epoch; each video is held once however many questions it has.

Shapes: ``B`` samples, ``T`` frames, ``N`` CUT3R patches, ``P`` SigLIP patches, ``C`` CUT3R
channels, ``Cv`` SigLIP channels, ``L`` text tokens.
"""

from __future__ import annotations

import heapq
import posixpath
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from vlm3r_core import storage
from vlm3r_core.prompting import VIDEO_PLACEHOLDER
from vlm3r_core.tokens import (
    EncoderInfo,
    VideoTokens,
    iter_video_tokens,
    read_encoder_info,
    read_token_table,
    read_video_shards,
)
from vlm3r_core.vlm import VideoFeatures, Vlm3rConfig, Vlm3rProcessor

TOKEN_COLUMNS = ["frame_indices", "timestamps", "duration_s", "camera_tokens", "patch_tokens", "vision_features"]
QA_SUFFIXES = (".jsonl", ".json", ".parquet")
QA_MANIFEST = "manifest.json"


# Conversations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingExample:
    """One supervised exchange about a video.

    Either ``question`` (with ``options``) is set and the user turn is rendered at training time
    from the video's token row and the model's ``PromptConfig``, or ``user_message`` holds a
    pre-rendered user turn (with ``<image>``) that is used as given.
    """

    id: str
    video_id: str
    answer: str
    question: str | None = None
    options: tuple[str, ...] = ()
    user_message: str | None = None

    def render(self, processor: Vlm3rProcessor, video: VideoTokens) -> str:
        """The user turn: rendered exactly as evaluation and serving render it, or the given one."""
        if self.question is None:
            return self.user_message
        return processor.user_message(
            self.question, self.options, timestamps=video.timestamps.tolist(), duration_s=video.duration_s
        )


def _video_id(row: dict) -> str:
    if row.get("video_id"):
        return str(row["video_id"])
    if row.get("dataset") and row.get("scene_name"):
        return f"{row['dataset']}/{row['scene_name']}"
    raise ValueError(f"training row {row.get('id')!r} has no video_id (nor dataset + scene_name) to join tokens on")


def example_from_row(row: dict) -> TrainingExample:
    """Validates one training row.

    A row with ``question`` needs a non-empty ``answer`` (``options``: lettered choices or empty);
    otherwise the row must be in LLaVA form: one human turn with ``<image>`` once, then one answer.
    """
    row_id = str(row.get("id", "?"))
    if row.get("question") is not None:
        question, answer = str(row["question"]), str(row.get("answer") or "")
        if VIDEO_PLACEHOLDER in question:
            raise ValueError(f"training row {row_id!r}: the question must not contain {VIDEO_PLACEHOLDER!r}")
        if not answer.strip():
            raise ValueError(f"training row {row_id!r}: a row with a question needs a non-empty answer")
        options = tuple(str(o) for o in (row.get("options") or ()))
        return TrainingExample(id=row_id, video_id=_video_id(row), answer=answer, question=question, options=options)
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
    return TrainingExample(id=row_id, video_id=_video_id(row), answer=str(gpt["value"]), user_message=str(human["value"]))


TRAINING_COLUMNS = ["id", "video_id", "dataset", "scene_name", "question", "options", "answer", "conversations"]


def _iter_rows(uri: str) -> Iterator[dict]:
    """Rows of one file; parquet one row group at a time, its LLaVA ``conversations`` turned into
    Python objects only for row groups with rows that have no ``question``."""
    if uri.endswith(".jsonl"):
        yield from storage.read_jsonl(uri)
    elif uri.endswith(".json"):
        rows = storage.read_json(uri)
        if not isinstance(rows, list):
            raise ValueError(f"{uri}: expected a JSON list of training rows")
        yield from rows
    elif uri.endswith(".parquet"):
        for table in storage.iter_parquet(uri, TRAINING_COLUMNS):
            if "question" in table.column_names and table.column("question").null_count == 0:
                table = table.drop_columns([c for c in ("conversations",) if c in table.column_names])
            yield from table.to_pylist()
    else:
        raise ValueError(f"{uri}: training conversations must be .jsonl, .json or .parquet")


def _is_file(uri: str) -> bool:
    return posixpath.splitext(uri.rstrip("/"))[1] in QA_SUFFIXES


def read_training_examples(uri: str) -> list[TrainingExample]:
    """Reads training conversations from a file or a folder of ``.jsonl``/``.json``/``.parquet``
    files (a split of a generated data set: ``qa/conversations/train``), streaming: parquet shards
    one row group at a time, only the fields training uses kept.

    Raises:
        ValueError: a malformed row (the message names it), duplicate ids, or no rows at all.
    """
    files = [uri] if _is_file(uri) else [f for f in storage.list_files(uri) if f.endswith(QA_SUFFIXES)]
    files = [f for f in files if posixpath.basename(f) != QA_MANIFEST]
    examples = [example_from_row(row) for f in files for row in _iter_rows(f)]
    if not examples:
        raise ValueError(f"{uri}: no training conversations found")
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise ValueError(f"{uri}: duplicate training row id {ex.id!r}")
        seen.add(ex.id)
    return examples


# The join (driver) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinPlan:
    """Which examples can be trained on (and the shard holding each one's video), which cannot and why."""

    examples: list[TrainingExample]
    skipped: list[dict]  # {id, video_id, reason}
    shards: dict[str, str]  # video_id -> shard URI, for the videos of ``examples``


def plan_join(examples: Sequence[TrainingExample], video_shards: Mapping[str, str]) -> JoinPlan:
    """Splits examples into those whose video has a token row and those skipped (with the reason)."""
    kept = [ex for ex in examples if ex.video_id in video_shards]
    skipped = [
        {"id": ex.id, "video_id": ex.video_id, "reason": "no token row for this video in the token shards"}
        for ex in examples
        if ex.video_id not in video_shards
    ]
    return JoinPlan(examples=kept, skipped=skipped, shards={ex.video_id: video_shards[ex.video_id] for ex in kept})


def check_encoder(encoder: EncoderInfo, model: Vlm3rConfig, tokens_uri: str) -> None:
    """Refuses a shard set the training preset cannot use: no SigLIP features, or another preset,
    CUT3R or SigLIP image size, or frame count; the message names both values of each difference."""
    if not encoder.with_vision_features:
        raise ValueError(
            f"{tokens_uri}: the token shards have no vision_features; training runs no frozen encoder, "
            "precompute the tokens with the SigLIP features (precompute_tokens.py --with-vision-features)"
        )
    pairs = {
        "preset": (encoder.preset, model.name),
        "CUT3R image size": (encoder.image_size, model.cut3r_image_size),
        "SigLIP image size": (encoder.vision_image_size, model.siglip_image_size),
        "frames per video": (encoder.num_frames, model.num_frames),
    }
    differ = [f"{name} {got!r} (training preset: {want!r})" for name, (got, want) in pairs.items() if got != want]
    if differ:
        raise ValueError(
            f"{tokens_uri}: the token shards ({encoder.name}) were not made for the training preset "
            f"{model.name!r}: {'; '.join(differ)}. Precompute the tokens with --preset {model.name} "
            "--with-vision-features, or train the preset they were made for"
        )


def _parent(uri: str) -> str | None:
    """The folder above ``uri`` (None above a bucket or the file system root)."""
    scheme, sep, path = uri.rpartition("://")
    if "/" not in path.strip("/"):
        return None
    return f"{scheme}{sep}{posixpath.dirname(path.rstrip('/'))}"


def find_qa_manifest(qa_uri: str) -> str | None:
    """``qa/manifest.json`` of generated conversations: in their folder or up to two folders up
    (``<root>/qa/`` for ``<root>/qa/conversations/train`` or a shard in it); None for
    conversations from elsewhere."""
    uri = storage.absolute(qa_uri).rstrip("/")
    candidate = _parent(uri) if _is_file(uri) else uri
    for _ in range(3):
        if candidate is None:
            break
        if storage.exists(storage.join(candidate, QA_MANIFEST)):
            return storage.join(candidate, QA_MANIFEST)
        candidate = _parent(candidate)
    return None


def check_qa_frames(qa_uri: str, model: Vlm3rConfig) -> None:
    """Refuses questions generated for another frame count than the training preset's ("frame k
    of K" names the k-th of K sampled frames). Conversations without a QA manifest are not checked."""
    manifest_uri = find_qa_manifest(qa_uri)
    if manifest_uri is None:
        return
    frames = storage.read_json(manifest_uri).get("num_frames")
    if frames is not None and frames != model.num_frames:
        raise ValueError(
            f"{qa_uri}: the questions were generated for {frames} frames per video ({manifest_uri}), "
            f"the training preset {model.name!r} samples {model.num_frames}; generate the QA data again "
            f"for preset {model.name!r}"
        )


def plan_training_join(qa_uri: str, tokens_uri: str, model: Vlm3rConfig) -> JoinPlan:
    """Reads the conversations, the shard set's encoder and video ids, and plans the join.

    Args:
        model: the training model's config (its preset name, image sizes and ``num_frames``).

    Raises:
        ValueError: shards without ``vision_features`` or made for another preset, image size or
            frame count; questions generated for another frame count; a malformed conversation;
            no conversation with tokens at all.
    """
    check_encoder(read_encoder_info(tokens_uri), model, tokens_uri)
    check_qa_frames(qa_uri, model)
    plan = plan_join(read_training_examples(qa_uri), read_video_shards(tokens_uri))
    if not plan.examples:
        raise ValueError(f"no training conversation of {qa_uri} has a token row in {tokens_uri}")
    return plan


# Worker shares and the order of every epoch --------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """What the workers stream: each rank's videos, their shards and conversations, batches per epoch.

    Attributes:
        examples: ``video_id -> conversations`` (sorted by id).
        shards: ``video_id -> shard URI`` holding its token row.
        ranks: the video ids of each rank (whole videos, balanced by conversation count).
        batch_size: samples per micro-batch.
        batches_per_epoch: micro-batches every rank takes per epoch (the smallest share's; the
            other ranks leave their surplus of the epoch's order out).
    """

    examples: dict[str, tuple[TrainingExample, ...]]
    shards: dict[str, str]
    ranks: tuple[tuple[str, ...], ...]
    batch_size: int
    batches_per_epoch: int

    @classmethod
    def split(cls, plan: JoinPlan, world_size: int, batch_size: int) -> TrainingData:
        """Gives each of ``world_size`` ranks whole videos, balanced by conversation count.

        Videos go, most conversations first (ties by id), to the rank with the fewest
        conversations so far (ties: the lowest rank): the same plan always gives the same shares.

        Raises:
            ValueError: a rank would get fewer than ``batch_size`` conversations.
        """
        by_video: dict[str, list[TrainingExample]] = {}
        for ex in plan.examples:
            by_video.setdefault(ex.video_id, []).append(ex)
        examples = {v: tuple(sorted(exs, key=lambda e: e.id)) for v, exs in sorted(by_video.items())}
        heap = [(0, rank) for rank in range(world_size)]
        ranks: list[list[str]] = [[] for _ in range(world_size)]
        for video in sorted(examples, key=lambda v: (-len(examples[v]), v)):
            total, rank = heapq.heappop(heap)
            ranks[rank].append(video)
            heapq.heappush(heap, (total + len(examples[video]), rank))
        totals = [sum(len(examples[v]) for v in videos) for videos in ranks]
        if min(totals) < batch_size:
            rank = int(np.argmin(totals))
            raise ValueError(
                f"worker {rank} of {world_size} gets {totals[rank]} conversations ({len(ranks[rank])} videos of "
                f"{len(examples)}), fewer than micro_batch_size={batch_size}; use fewer workers or a smaller batch"
            )
        return cls(
            examples=examples,
            shards={v: plan.shards[v] for v in examples},
            ranks=tuple(tuple(videos) for videos in ranks),
            batch_size=batch_size,
            batches_per_epoch=min(totals) // batch_size,
        )

    def epoch_samples(self, rank: int, epoch: int, seed: int, shuffle_window: int) -> list[tuple[str, int]]:
        """The samples ``(video_id, index into examples[video_id])`` rank ``rank`` trains on in ``epoch``, in order.

        The rank's videos are permuted and grouped into windows of at least ``shuffle_window``
        conversations; the conversations of a window are shuffled (``shuffle_window=0``: videos
        and conversations in their plan order). A pure function of its arguments and the plan.
        Returns ``batches_per_epoch * batch_size`` samples.
        """
        rng = np.random.default_rng([seed, epoch, rank])
        videos = list(self.ranks[rank])
        if shuffle_window:
            videos = [videos[i] for i in rng.permutation(len(videos))]
        samples: list[tuple[str, int]] = []
        window: list[tuple[str, int]] = []
        for video in videos:
            window += [(video, i) for i in range(len(self.examples[video]))]
            if len(window) >= shuffle_window:
                samples += _shuffled(window, rng, shuffle_window)
                window = []
        samples += _shuffled(window, rng, shuffle_window)
        return samples[: self.batches_per_epoch * self.batch_size]


def _shuffled(window: list, rng: np.random.Generator, shuffle_window: int) -> list:
    return [window[i] for i in rng.permutation(len(window))] if shuffle_window else window


def read_training_video(shard: str, video_id: str) -> VideoTokens:
    """One video's token row (only its row group is read), with the columns training uses."""
    videos = list(iter_video_tokens(read_token_table(shard, video_ids=[video_id], columns=TOKEN_COLUMNS)))
    if len(videos) != 1:
        raise ValueError(f"{shard}: no token row for video {video_id!r} (the shard set changed since the plan?)")
    return videos[0]


# Collation --------------------------------------------------------------------------------------------


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


Sample = tuple[TrainingExample, VideoTokens]


class TrainCollator:
    """Samples (a conversation and its video's token row) -> :class:`TrainBatch`.

    Args:
        processor: the VLM processor: ``user_message`` renders the user turn as evaluation and
            serving do, ``build_batch`` the ChatML text with everything but the answer masked.
        dtype: dtype of the token arrays fed to the model (shards are fp16): float32 on CPU,
            bfloat16 on GPU.
    """

    def __init__(self, processor: Vlm3rProcessor, dtype: torch.dtype):
        self.processor = processor
        self.dtype = dtype

    def __call__(self, samples: Sequence[Sample]) -> TrainBatch:
        for ex, video in samples:
            if video.vision_features is None:
                raise ValueError(
                    f"video {video.video_id!r} (row {ex.id!r}) has no vision_features: training runs no frozen "
                    "encoder, so the token shards must be precomputed with the SigLIP features"
                )
        messages = [ex.render(self.processor, video) for ex, video in samples]
        text = self.processor.build_batch(messages, answers=[ex.answer for ex, _ in samples])
        features = VideoFeatures.from_videos(
            [v.vision_features for _, v in samples],
            [v.camera_tokens for _, v in samples],
            [v.patch_tokens for _, v in samples],
            dtype=self.dtype,
        )
        frames = int(features.frame_mask.sum())
        video_tokens = frames * self.processor.config.tokens_per_frame - len(samples)
        return TrainBatch(
            input_ids=text.input_ids,
            attention_mask=text.attention_mask,
            labels=text.labels,
            features=features,
            num_tokens=int(text.attention_mask.sum()) + video_tokens,
        )


# Streaming on a worker ----------------------------------------------------------------------------------


class _VideoReader:
    """Reads the videos of an epoch in order of first use, up to ``prefetch`` ahead on a thread."""

    def __init__(self, shards: Mapping[str, str], load: Callable[[str, str], VideoTokens], prefetch: int):
        self.shards, self.load, self.prefetch = shards, load, prefetch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="video-reader") if prefetch else None
        self.loaded: dict[str, Future | VideoTokens] = {}
        self.order: list[str] = []
        self.next = 0  # index in ``order`` of the next video to start reading
        self.ahead = 0  # videos started but not yet used

    def start_epoch(self, order: list[str]) -> None:
        self.order, self.next, self.ahead = order, 0, 0
        self.loaded.clear()

    def _fill(self) -> None:
        while self.pool is not None and self.next < len(self.order) and self.ahead < self.prefetch:
            video = self.order[self.next]
            self.loaded[video] = self.pool.submit(self.load, self.shards[video], video)
            self.next, self.ahead = self.next + 1, self.ahead + 1

    def get(self, video: str) -> VideoTokens:
        if video not in self.loaded:  # first use of the next video in order, not read ahead
            self.loaded[video] = self.load(self.shards[video], video)
            self.next += 1
        elif isinstance(self.loaded[video], Future):
            self.loaded[video] = self.loaded[video].result()
            self.ahead -= 1
        self._fill()
        return self.loaded[video]

    def release(self, video: str) -> None:
        self.loaded.pop(video, None)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class MicroBatchStream:
    """The micro-batches of each optimiser step of one worker, and where in the data it is.

    Args:
        data: the plan split over the workers (:meth:`TrainingData.split`).
        rank: this worker's rank.
        collator: samples -> :class:`TrainBatch`.
        grad_accum_steps: micro-batches per optimiser step.
        seed, shuffle_window: the order of every epoch (:meth:`TrainingData.epoch_samples`).
        position: ``(epoch, batch_in_epoch)`` of the last micro-batch already trained on
            (batches counted from 1); ``(0, 0)`` for a fresh run. The stream goes on with the next
            batch of the same order, reading no token of the batches before it.
        prefetch: videos read ahead on a background thread (0: read when needed).
        load: ``(shard, video_id) -> VideoTokens`` (:func:`read_training_video`).
    """

    def __init__(
        self,
        data: TrainingData,
        rank: int,
        collator: Callable[[Sequence[Sample]], TrainBatch],
        grad_accum_steps: int,
        seed: int,
        shuffle_window: int,
        position: tuple[int, int] = (0, 0),
        prefetch: int = 2,
        load: Callable[[str, str], VideoTokens] = read_training_video,
    ):
        self.data, self.rank, self.collator = data, rank, collator
        self.grad_accum_steps, self.seed, self.shuffle_window = grad_accum_steps, seed, shuffle_window
        self.position = position
        self._reader = _VideoReader(data.shards, load, prefetch)
        epoch, batch = position
        if batch >= data.batches_per_epoch:  # the checkpoint was taken at the end of an epoch
            epoch, batch = epoch + 1, 0
        self._batches = self._iterate(epoch, batch)

    def _iterate(self, epoch: int, skip: int) -> Iterator[tuple[int, int, list[Sample]]]:
        b = self.data.batch_size
        while True:
            samples = self.data.epoch_samples(self.rank, epoch, self.seed, self.shuffle_window)
            batches = [samples[i * b : (i + 1) * b] for i in range(skip, self.data.batches_per_epoch)]
            last_use = {video: n for n, batch in enumerate(batches) for video, _ in batch}
            self._reader.start_epoch(list(dict.fromkeys(video for batch in batches for video, _ in batch)))
            for n, batch in enumerate(batches):
                videos = {video: self._reader.get(video) for video, _ in batch}
                yield epoch, skip + n + 1, [(self.data.examples[video][i], videos[video]) for video, i in batch]
                for video in videos:
                    if last_use[video] == n:
                        self._reader.release(video)
            epoch, skip = epoch + 1, 0

    def next_samples(self) -> list[Sample]:
        """The samples of the next micro-batch; advances :attr:`position`."""
        epoch, batch, samples = next(self._batches)
        self.position = (epoch, batch)
        return samples

    def next_step(self) -> list[TrainBatch]:
        """Collated micro-batches of the next optimiser step; advances :attr:`position`."""
        return [self.collator(self.next_samples()) for _ in range(self.grad_accum_steps)]

    def close(self) -> None:
        """Stops the reader thread."""
        self._reader.close()
