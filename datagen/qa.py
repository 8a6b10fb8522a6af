"""QA generation for a set of scenes: scene -> rows, seeding, letter balancing.

Stages (``jobs/generate_qa.py`` runs each over Ray; :mod:`datagen.dataset` writes the data set):

1. :func:`process_scene`: one scene -> its rows *before* letters are assigned, cached as
   ``<out>/qa/_per_scene/<config fingerprint>/<dataset>/<scene>-<scene.json version>.parquet``. Every task draws from its
   own generator seeded with ``blake2b(seed, dataset, scene, task)``, so a scene's rows depend on
   nothing but the scene and the configuration. With ``templates="diverse"`` the wording of each
   question is drawn from a second generator of the task, seeded with
   ``blake2b(seed, dataset, scene, task, "templates")``: the same questions and answers as
   ``"official"``, worded by the official template or one of its paraphrases, whose id each row
   records (``template``, ``"<question_type>/<k>"``, 0 = official). A scene that fails is
   reported with its reason and leaves no cache file; re-running skips the scenes already cached
   (resume), and generates a scene again when its ``scene.json`` was rewritten.
2. :class:`LetterBalancer`: rows in id order; multiple-choice answers are put on the letter used
   least so far for their question type (ties and the order of the other options drawn from a
   generator seeded by ``(seed, row id)``). :mod:`datagen.dataset` runs one balancer per shard
   group (``DatasetConfig.scenes_per_shard`` scenes in id order), so letters are balanced within
   every group, memory stays bounded, and the result is the same for any number of workers.
3. :func:`conversation`: the training sample of a benchmark row (``question``, ``options``,
   ``answer``, ``video_id``, from which training renders the prompt exactly as evaluation and
   serving do, plus the LLaVA form for other tools, built by :mod:`vlm3r_core.prompting`).

Benchmark rows carry the VSI-Bench fields plus ``mc_answer``, ``frame_indices``, ``video``,
``split``, ``seed``, ``generator_version`` and ``template``; route questions add the planner that
drew them to ``generator_version`` (``vlm3r-qa-2+builtin`` or ``vlm3r-qa-2+habitat``).
``vlm3r-qa-2`` differs from ``vlm3r-qa-1`` in the letters only, and only in runs of more than one
shard group (256 scenes by default): ``-1`` balanced letters over the whole run on the driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from datagen.routing import RoutePlannerChoice, resolve_route_planner
from datagen.scene_graph import SceneGraph
from datagen.tasks import TASK_SETS, TASKS, expand_task_names
from datagen.tasks.common import OFFICIAL_TEMPLATES, TemplatePicker, fill_choices
from datagen.vocabulary import VOCABULARIES, VocabularyChoice, vocabulary_tables
from vlm3r_core import storage
from vlm3r_core.prompting import PromptConfig, answer_text, build_conversation, build_user_message
from vlm3r_core.scene import Scene, SceneRef, read_scene, verify_video

GENERATOR_VERSION = "vlm3r-qa-2"
LETTERS = "ABCD"
TemplateChoice = Literal["official", "diverse"]
TEMPLATE_CHOICES: tuple[str, ...] = ("official", "diverse")

# Rows of one scene before letters are assigned (the per-scene cache).
SCENE_ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("scene_name", pa.string()),
        ("question_type", pa.string()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("choices_in_question", pa.bool_()),
        ("frame_indices", pa.list_(pa.int64())),
        ("video", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("generator_version", pa.string()),
        ("timestamps", pa.list_(pa.float64())),
        ("duration_s", pa.float64()),
        ("template", pa.string()),
    ]
)
# Benchmark rows: the VSI-Bench field names plus what training and scoring need (README "Data layout").
BENCHMARK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("scene_name", pa.string()),
        ("question_type", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("ground_truth", pa.string()),
        ("mc_answer", pa.string()),
        ("frame_indices", pa.list_(pa.int64())),
        ("video", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("generator_version", pa.string()),
        ("template", pa.string()),
    ]
)


@dataclass(frozen=True)
class QAConfig:
    """What to generate.

    Attributes:
        tasks: task names (keys of :data:`datagen.tasks.TASKS`) and task-set names (keys of
            :data:`datagen.tasks.TASK_SETS`: ``"official"``, the 13 VSI-Bench / VSTI-Bench families;
            ``"extended"``, this project's families; ``"all"``), expanded when the config is made
            into task names, each once, in the order given. Default: the official set.
        seed: run seed; every scene and task derives its own from it.
        caps: questions per scene and question type, per task name; tasks not named use their
            ``DEFAULT_CAP`` (or ``default_cap`` when set).
        default_cap: one cap for every task not in ``caps``.
        preset: the model preset (``vlm3r_core.presets``) the questions are made for; its config
            is the one root of the frame count and of the prompt settings.
        num_frames: K frames sampled per video ("frame k of K"), always the preset's
            ``num_frames``: leave it unset (None); a value given must equal it.
        prompt: prompt settings of the LLaVA form of the conversations: the preset's (derived;
            training renders its prompts with the trained model's own).
        route_planner: the route task's planner: ``"builtin"``, ``"habitat"`` (habitat-sim's navmesh;
            ImportError when ``habitat_sim`` does not import) or ``"auto"`` (habitat when it imports).
            Resolved to builtin or habitat when the config is made (on the driver), so every worker
            plans with the same one and the cache fingerprint names it.
        vocabulary: which objects questions name (:mod:`datagen.vocabulary`): ``"vsibench"``, the
            benchmark's vocabulary per dataset with its merges (objects outside it stay as geometry
            but are never named or counted; synthetic scenes name every object), or ``"all"``,
            every raw label as it is.
        templates: how questions are worded: ``"official"`` (default), every question by its
            type's official template (the benchmark's text for VSI-/VSTI-Bench types: the rows
            of earlier versions, plus the ``template`` column), or ``"diverse"``, each question by
            its official template or one of its paraphrases, drawn per question from a generator
            of its own (the questions and answers are those of ``"official"``).
    """

    tasks: tuple[str, ...] = TASK_SETS["official"]
    seed: int = 0
    caps: Mapping[str, int] = field(default_factory=dict, metadata={"cli": False})
    default_cap: int | None = field(default=None, metadata={"cli": False})
    preset: str = "tiny"
    num_frames: int | None = field(default=None, metadata={"cli": False})
    prompt: PromptConfig = field(init=False, default=PromptConfig())
    route_planner: RoutePlannerChoice = "auto"
    vocabulary: VocabularyChoice = "vsibench"
    templates: TemplateChoice = "official"

    def __post_init__(self):
        if isinstance(self.tasks, str):
            raise ValueError(f"tasks must be a sequence of names, got the string {self.tasks!r}")
        object.__setattr__(self, "tasks", expand_task_names(self.tasks))
        unknown = [t for t in self.caps if t not in TASKS]
        if unknown:
            raise ValueError(f"caps for unknown task(s) {unknown}; known: {list(TASKS)}")
        if not self.tasks:
            raise ValueError("no tasks selected")
        if any(c < 0 for c in self.caps.values()) or (self.default_cap is not None and self.default_cap < 0):
            raise ValueError(f"caps must be >= 0, got {dict(self.caps)} / {self.default_cap}")
        from vlm3r_core.presets import get_preset  # only on the driver: workers get the config pickled

        model = get_preset(self.preset)
        if self.num_frames is not None and self.num_frames != model.num_frames:
            raise ValueError(
                f"num_frames={self.num_frames} disagrees with preset {self.preset!r}, which samples "
                f"{model.num_frames} frames per video: the frame count comes from the model preset"
            )
        object.__setattr__(self, "num_frames", model.num_frames)
        object.__setattr__(self, "prompt", model.prompt)
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"vocabulary must be one of {list(VOCABULARIES)}, got {self.vocabulary!r}")
        if self.templates not in TEMPLATE_CHOICES:
            raise ValueError(f"templates must be one of {list(TEMPLATE_CHOICES)}, got {self.templates!r}")
        object.__setattr__(self, "route_planner", resolve_route_planner(self.route_planner))

    def cap(self, task: str) -> int:
        if task in self.caps:
            return self.caps[task]
        return TASKS[task].default_cap if self.default_cap is None else self.default_cap

    def generator_version(self, task: str) -> str:
        """``GENERATOR_VERSION``; for route questions with ``+<planner>`` (``vlm3r-qa-2+habitat``)."""
        return (
            f"{GENERATOR_VERSION}+{self.route_planner}"
            if TASKS[task].uses_route_planner
            else GENERATOR_VERSION
        )

    def template_picker(self, dataset: str, scene_id: str, task: str) -> TemplatePicker:
        """How one task words the questions of one scene: the official templates, or (``"diverse"``)
        a draw per question from a generator seeded with ``(seed, dataset, scene, task, "templates")``."""
        if self.templates == "official":
            return OFFICIAL_TEMPLATES
        return TemplatePicker(
            np.random.default_rng(derive_seed(self.seed, dataset, scene_id, task, "templates"))
        )

    def fingerprint(self) -> str:
        """Short hash of everything that changes the per-scene rows (names the cache folder)."""
        key = json.dumps(
            [
                GENERATOR_VERSION,
                sorted(self.tasks),
                self.seed,
                {t: self.cap(t) for t in sorted(self.tasks)},
                self.num_frames,
                self.route_planner,
                self.vocabulary,
                vocabulary_tables(self.vocabulary),
                self.templates,
            ]
        )
        return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def parse_caps(values: Sequence[str]) -> tuple[int | None, dict[str, int]]:
    """``["20", "route_planning=5"]`` -> ``(20, {"route_planning": 5})`` (the ``--per-scene-cap`` form)."""
    default, caps = None, {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            cap = int(number)
        except ValueError:
            raise ValueError(f"per_scene_cap {value!r}: expected N or TASK=N") from None
        if name:
            caps[name] = cap
        else:
            default = cap
    return default, caps


@dataclass(frozen=True)
class DatasetConfig:
    """How the rows are written (:mod:`datagen.dataset`) and checked for answer bias (:mod:`datagen.bias`).

    Args:
        scenes_per_shard: scenes per shard group, in id order: each group is written as one
            parquet file per split (benchmark rows and conversations) with the answer letters
            balanced within it; bounds the rows a writer holds and a file's size.
        debias: prune rows until the blind baselines sit near chance on the held-out rows.
        debias_tolerance: how far above chance (accuracy, or MRA over the typical answer) a blind
            baseline may sit.
        debias_rounds: at most this many pruning rounds.
    """

    scenes_per_shard: int = 256
    debias: bool = False
    debias_tolerance: float = 0.05
    debias_rounds: int = 3

    def __post_init__(self):
        if self.scenes_per_shard < 1:
            raise ValueError(f"scenes_per_shard must be >= 1, got {self.scenes_per_shard}")
        if not 0 <= self.debias_tolerance < 1:
            raise ValueError(f"debias_tolerance must be in [0, 1), got {self.debias_tolerance}")
        if self.debias_rounds < 1:
            raise ValueError(f"debias_rounds must be >= 1, got {self.debias_rounds}")


@dataclass(frozen=True)
class GenerateQAConfig:
    """A QA generation run: where scenes come from and go, what to generate, how much at once.

    Args:
        scenes: folder URI holding ``.../<dataset>/<scene_id>/scene.json`` (a data root, its
            ``scenes/`` or one dataset's folder).
        out: output root URI (writes ``<out>/qa/...``).
        qa: what to generate.
        dataset: how the rows are written: shards, bias control.
        per_scene_cap: questions per scene and question type: ``N`` for every task, ``TASK=N`` for
            one (default: each task's own cap).
        num_cpus_per_scene: CPUs of each scene's Ray task.
        concurrency: at most this many scenes at once (default: as Ray schedules).
    """

    scenes: str
    out: str
    qa: QAConfig = field(default_factory=QAConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    per_scene_cap: tuple[str, ...] = ()
    num_cpus_per_scene: float = 0.5
    concurrency: int | None = None

    def __post_init__(self):
        if self.per_scene_cap:
            default, caps = parse_caps(self.per_scene_cap)
            qa = self.qa
            default = qa.default_cap if default is None else default
            object.__setattr__(self, "qa", dataclasses.replace(qa, caps={**qa.caps, **caps}, default_cap=default))
        if not self.num_cpus_per_scene > 0:
            raise ValueError(f"num_cpus_per_scene must be > 0, got {self.num_cpus_per_scene}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``blake2b`` of the parts (stable across processes and Python versions)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---- stage 1: one scene ----------------------------------------------------------------------


def generate_scene_rows(scene: Scene, video_uri: str, config: QAConfig) -> list[dict]:
    """All rows of one scene, before letters are assigned (``SCENE_ROW_SCHEMA``), sorted by id."""
    graph = SceneGraph(scene, config.num_frames, config.vocabulary)
    timestamps, duration = graph.timestamps, graph.duration_s
    rows = []
    for task in config.tasks:
        rng = np.random.default_rng(derive_seed(config.seed, scene.dataset, scene.scene_id, task))
        templates = config.template_picker(scene.dataset, scene.scene_id, task)
        options = {"planner": config.route_planner} if TASKS[task].uses_route_planner else {}
        numbers: Counter[str] = Counter()
        for item in TASKS[task].generate(graph, rng, config.cap(task), templates=templates, **options):
            n = numbers[item.question_type]
            numbers[item.question_type] += 1
            rows.append(
                {
                    "id": f"{scene.dataset}/{scene.scene_id}/{item.question_type}/{n:04d}",
                    "dataset": scene.dataset,
                    "scene_name": scene.scene_id,
                    "question_type": item.question_type,
                    "question": item.question,
                    "choices": list(item.choices),
                    "answer": item.answer,
                    "choices_in_question": item.choices_in_question,
                    "frame_indices": list(item.frame_indices),
                    "video": video_uri,
                    "split": scene.split,
                    "seed": config.seed,
                    "generator_version": config.generator_version(task),
                    "timestamps": timestamps,
                    "duration_s": duration,
                    "template": item.template,
                }
            )
    return sorted(rows, key=lambda r: r["id"])


def scene_cache_uri(out: str, config: QAConfig, ref: SceneRef) -> str:
    """``<out>/qa/_per_scene/<fingerprint>/<dataset>/<scene>-<version hash>.parquet``: a scene
    rewritten in place (a new ``scene.json`` version) misses the cache and is generated again."""
    dataset, name = posixpath.split(ref.dir.rstrip("/"))
    version = hashlib.blake2b(ref.version.encode(), digest_size=4).hexdigest()
    return storage.join(
        out,
        "qa",
        "_per_scene",
        config.fingerprint(),
        posixpath.basename(dataset),
        f"{name}-{version}.parquet",
    )


def cached_scenes(out: str, config: QAConfig, scenes: Sequence[SceneRef]) -> dict[str, dict]:
    """The scenes whose rows are already cached for ``config`` (one listing of the cache folder),
    as ledger rows ``{scene, version, cache}`` keyed by scene folder."""
    folder = storage.join(out, "qa", "_per_scene", config.fingerprint())
    present = set(storage.list_files(folder, ".parquet"))
    return {
        r.dir: {"scene": r.dir, "version": r.version, "cache": uri}
        for r in scenes
        if (uri := scene_cache_uri(out, config, r)) in present
    }


@dataclass(frozen=True)
class SceneResult:
    """What happened to one scene: rows written to its cache, or why it failed."""

    scene_dir: str
    num_rows: int
    error: str | None = None
    cached: bool = False


def process_scene(ref: SceneRef, out: str, config: QAConfig) -> SceneResult:
    """Generates and caches the rows of one scene; a failure comes back as ``error``, not raised.

    The scene's video is checked against its ``scene.json`` first (frame count and size, from the
    container header): questions about frames a truncated video does not have are never written.
    """
    cache = scene_cache_uri(out, config, ref)
    if storage.exists(cache):
        return SceneResult(ref.dir, storage.read_parquet(cache).num_rows, cached=True)
    try:
        scene = read_scene(ref.dir)
        rows = generate_scene_rows(scene, verify_video(scene, ref.dir), config)
    except Exception as e:  # noqa: BLE001 - any failure of one scene is recorded and the run goes on
        return SceneResult(ref.dir, 0, error=f"{type(e).__name__}: {e}")
    storage.write_parquet(cache, pa.Table.from_pylist(rows, schema=SCENE_ROW_SCHEMA))
    return SceneResult(ref.dir, len(rows))


# ---- stage 2: letters ------------------------------------------------------------------------


class LetterBalancer:
    """Puts the correct choice of multiple-choice rows on letters, balanced per question type.

    Rows must come in id order. Each correct choice goes to the letter, among the row's first
    ``len(choices)`` letters, used least so far by its question type over the rows this balancer
    has seen; ties and the order of the other choices come from a generator seeded by
    ``(seed, row id)``. The state is one counter per question type, so a balancer streams rows of
    any number. The writers balance each shard group (a fixed run of scenes in id order) with a
    fresh balancer: the result depends on the rows and the group size only, never on the number
    of workers or the order they finish in.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(LETTERS), dtype=np.int64))

    def letter(self, row: Mapping) -> dict:
        """The benchmark row (``BENCHMARK_SCHEMA``) of one pre-letter row."""
        choices, answer = list(row["choices"]), row["answer"]
        question, options, mc_answer, ground_truth = row["question"], [], None, answer
        if choices:
            n = len(choices)
            used = self.counts[row["question_type"]][:n]
            rng = np.random.default_rng(derive_seed(self.seed, row["id"]))
            slot = int(rng.choice(np.flatnonzero(used == used.min())))
            others = [c for c in choices if c != answer]
            others = [others[i] for i in rng.permutation(len(others))]
            ordered = others[:slot] + [answer] + others[slot:]
            self.counts[row["question_type"]][slot] += 1
            options = [f"{LETTERS[i]}. {c}" for i, c in enumerate(ordered)]
            mc_answer = ground_truth = LETTERS[slot]
            if row["choices_in_question"]:
                question = fill_choices(question, ordered)
        return {
            "id": row["id"],
            "dataset": row["dataset"],
            "scene_name": row["scene_name"],
            "question_type": row["question_type"],
            "question": question,
            "options": options,
            "ground_truth": ground_truth,
            "mc_answer": mc_answer,
            "frame_indices": list(row["frame_indices"]),
            "video": row["video"],
            "split": row["split"],
            "seed": row["seed"],
            "generator_version": row["generator_version"],
            "template": row["template"],
        }


def assign_letters(rows: Iterable[dict], seed: int) -> list[dict]:
    """Benchmark rows (``BENCHMARK_SCHEMA``) from pre-letter rows, sorted by id, letters balanced
    per question type over all of them (one :class:`LetterBalancer`)."""
    balancer = LetterBalancer(seed)
    return [balancer.letter(row) for row in sorted(rows, key=lambda r: r["id"])]


def conversation(row: dict, timestamps: Sequence[float], duration_s: float, prompt: PromptConfig) -> dict:
    """The training sample of a benchmark row.

    Training reads ``question``, ``options`` and ``answer`` and renders the prompt itself, with the
    trained model's ``PromptConfig`` and the frame times of the video's token row, exactly as
    evaluation and serving do. ``conversations`` is the LLaVA form (via the one prompt builder, with
    the scene's frame times) for other tools. ``video_id`` (``<dataset>/<scene_name>``) is the key
    that joins it to the video's token row.
    """
    answer = answer_text(row["options"], row["ground_truth"], row["mc_answer"])
    user = build_user_message(
        row["question"], row["options"], timestamps=timestamps, duration_s=duration_s, config=prompt
    )
    return {
        "id": row["id"],
        "video": row["video"],
        "video_id": f"{row['dataset']}/{row['scene_name']}",
        "question": row["question"],
        "options": list(row["options"]),
        "answer": answer,
        "conversations": build_conversation(user, answer),
        "question_type": row["question_type"],
        "data_source": row["dataset"],
    }
