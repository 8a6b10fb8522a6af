"""The QA data set on storage: parquet shards per split, a manifest and a dataset card.

After every scene's pre-letter rows are cached (:func:`datagen.qa.process_scene`),
:func:`write_outputs` writes the data set in three steps, each a pass over *shard groups*: runs of
``DatasetConfig.scenes_per_shard`` scenes in id order (scene folders ``<dataset>/<scene_id>``
sorted as the ``<dataset>/<scene_id>/`` prefix of their row ids, so a group's rows are a
contiguous run of ids).

1. Bias (:func:`datagen.bias.measure_bias`): the blind baselines are fitted and scored, and with
   ``debias`` rows are pruned in rounds until they sit near chance.
2. Writing (:class:`WriteGroup`, one call per group, on any worker): the group's scenes are read
   one at a time, rows the pruning rule removes are dropped, letters are assigned by one
   :class:`~datagen.qa.LetterBalancer` per group, and the rows are written as
   ``benchmark/<split>/part-<group>.parquet`` and ``conversations/<split>/part-<group>.parquet``
   (row groups of ``ROW_GROUP_ROWS`` rows). A writer holds one scene's rows and the row group being
   filled, whatever the number of scenes.
3. The driver sums the groups' counts and writes ``manifest.json`` and ``README.md`` (the dataset
   card); files of an earlier run that this run did not write are removed.

``map_fn(fn, items)`` runs a step's calls: ``map`` in one process, the job's Ray map on a cluster.
The driver only sums small per-group results, so its memory stays flat as scenes grow, and every
output depends on the rows and ``scenes_per_shard``, never on the number of workers.

Layout under ``<out>/qa/``::

    README.md                                    dataset card (Hugging Face YAML header: one config per kind, one split per split)
    manifest.json                                settings, schema, shards, counts, letters, blind baselines
    benchmark/<split>/part-<group>.parquet       benchmark rows (``datagen.qa.BENCHMARK_SCHEMA``)
    conversations/<split>/part-<group>.parquet   training conversations (``CONVERSATION_SCHEMA``)
    scenes.jsonl, errors.jsonl                   the run ledger: scenes done, scenes failed with the reason
    _per_scene/<fingerprint>/<dataset>/<scene>-<version>.parquet   per-scene cache (resume)

Any parquet reader loads a split: ``datasets.load_dataset("parquet", data_files=
"<out>/qa/benchmark/val/*.parquet")``, ``pyarrow.dataset.dataset("<out>/qa/benchmark/val")``,
and every job of this system takes the split folder (``--benchmark <out>/qa/benchmark/val``,
``--qa <out>/qa/conversations/train``).
"""

from __future__ import annotations

import io
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from datagen.bias import BASELINES, BiasResult, BiasRounds, BlindRow, measure_bias
from datagen.qa import (
    BENCHMARK_SCHEMA,
    GENERATOR_VERSION,
    LETTERS,
    DatasetConfig,
    LetterBalancer,
    QAConfig,
    SceneResult,
    conversation,
    scene_cache_uri,
)
from datagen.tasks import TASK_SETS
from datagen.vocabulary import vocabulary_tables
from vlm3r_core import storage
from vlm3r_core.prompting import PromptConfig
from vlm3r_core.scene import SceneRef

KINDS = ("benchmark", "conversations")
ROW_GROUP_ROWS = 4096
CONVERSATION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("video", pa.string()),
        ("video_id", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("question_type", pa.string()),
        ("data_source", pa.string()),
    ]
)
SCHEMAS = {"benchmark": BENCHMARK_SCHEMA, "conversations": CONVERSATION_SCHEMA}
FEATURES = {
    "benchmark": {
        "id": "`<dataset>/<scene_name>/<question_type>/<nnnn>`",
        "dataset": "source data set of the scene (`scannet`, `scannetpp`, `arkitscenes`, `synthetic`)",
        "scene_name": "scene id",
        "question_type": "VSI-Bench / VSTI-Bench question type, or an extended family's",
        "question": "the question text (without the options)",
        "options": "multiple choice: lettered options `A. ...`; empty for numeric answers",
        "ground_truth": "multiple choice: the letter; numeric: the value as text",
        "mc_answer": "the letter (multiple choice), else null",
        "frame_indices": "video frames the question names (frame k of K), else empty",
        "video": "URI of the scene's video",
        "split": "the scene's official split",
        "seed": "run seed",
        "generator_version": "generator version (route questions: `+<planner>`)",
        "template": "`<question_type>/<k>`: the template that worded the question (0 = official)",
    },
    "conversations": {
        "id": "the benchmark row's id",
        "video": "URI of the scene's video",
        "video_id": "`<dataset>/<scene_name>`: joins the video's token row",
        "question": "the question text",
        "options": "lettered options (empty for numeric answers)",
        "answer": "what the assistant says: the letter, or the value",
        "conversations": "LLaVA form `[{from: human, value: <image>...}, {from: gpt, value}]`",
        "question_type": "question type",
        "data_source": "source data set",
    },
}


# ---- groups ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardGroup:
    """A run of scenes in id order, written as one file per split and kind.

    Attributes:
        index: the group's number (``part-<index>``), from 0 in id order.
        caches: the per-scene cache files of its scenes, in id order.
    """

    index: int
    caches: tuple[str, ...]


def scene_key(ref: SceneRef) -> str:
    """``<dataset>/<scene_id>/``: the id prefix of a scene's rows (from its folder names)."""
    return f"{ref.video_id}/"


def plan_groups(
    out: str, config: QAConfig, scenes: Sequence[SceneRef], failed: set[str], scenes_per_shard: int
) -> list[ShardGroup]:
    """The scenes that did not fail, in id order, cut into groups of ``scenes_per_shard``."""
    ok = sorted((r for r in scenes if r.dir not in failed), key=scene_key)
    caches = [scene_cache_uri(out, config, r) for r in ok]
    return [
        ShardGroup(i, tuple(caches[start : start + scenes_per_shard]))
        for i, start in enumerate(range(0, len(caches), scenes_per_shard))
    ]


def read_group_rows(group: ShardGroup) -> Iterator[dict]:
    """The group's pre-letter rows, one scene at a time, in id order."""
    for cache in group.caches:
        yield from storage.read_parquet(cache).to_pylist()


def split_uri(out: str, kind: str, split: str) -> str:
    """``<out>/qa/<kind>/<split>``: the folder of a split's shards, what the jobs take
    (``kind``: ``"benchmark"`` or ``"conversations"``)."""
    return storage.join(out, "qa", kind, split)


def shard_uri(out: str, kind: str, split: str, index: int) -> str:
    return storage.join(split_uri(out, kind, split), f"part-{index:05d}.parquet")


# ---- writing one group -----------------------------------------------------------------------------


class _ShardWriter:
    """One parquet file built in memory row group by row group, written atomically at ``close``."""

    def __init__(self, uri: str, schema: pa.Schema, row_group_rows: int):
        self.uri, self.schema, self.row_group_rows = uri, schema, row_group_rows
        self.buffer = io.BytesIO()
        self.writer = pq.ParquetWriter(self.buffer, schema, compression="zstd")
        self.pending: list[dict] = []
        self.rows = 0

    def add(self, row: dict) -> None:
        self.pending.append(row)
        self.rows += 1
        if len(self.pending) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> int:
        """Writes the file; returns its size in bytes."""
        self._flush()
        self.writer.close()
        data = self.buffer.getvalue()
        storage.write_bytes(self.uri, data)
        return len(data)


@dataclass
class GroupStats:
    """What one group wrote: its files, rows per split and question type / dataset, rows pruned,
    correct letters per question type."""

    index: int
    shards: list[dict] = field(default_factory=list)  # {path, kind, split, rows, bytes}
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    datasets: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    removed: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    letters: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))


@dataclass(frozen=True)
class WriteGroup:
    """Writes one shard group (a Ray Data stage in the job; a plain call here).

    Args:
        out: output root URI.
        seed: the run seed (letters).
        prompt: prompt settings of the conversations' LLaVA form.
        rounds: the debiasing rule (no rounds: every row is kept).
        row_group_rows: rows per parquet row group.
    """

    out: str
    seed: int
    prompt: PromptConfig
    rounds: BiasRounds = field(default_factory=BiasRounds)
    row_group_rows: int = ROW_GROUP_ROWS

    def __call__(self, group: ShardGroup) -> GroupStats:
        stats = GroupStats(group.index)
        balancer = LetterBalancer(self.seed)
        writers: dict[tuple[str, str], _ShardWriter] = {}

        def writer(kind: str, split: str) -> _ShardWriter:
            if (kind, split) not in writers:
                uri = shard_uri(self.out, kind, split, group.index)
                writers[(kind, split)] = _ShardWriter(uri, SCHEMAS[kind], self.row_group_rows)
            return writers[(kind, split)]

        for row in read_group_rows(group):
            split, question_type = row["split"], row["question_type"]
            if self.rounds.rounds and not self.rounds.keeps(BlindRow.of(row)):
                stats.removed[split][question_type] += 1
                continue
            bench = balancer.letter(row)
            writer("benchmark", split).add(bench)
            writer("conversations", split).add(conversation(bench, row["timestamps"], row["duration_s"], self.prompt))
            stats.counts[split][question_type] += 1
            stats.datasets[split][row["dataset"]] += 1
            if bench["mc_answer"]:
                stats.letters[question_type][bench["mc_answer"]] += 1
        qa = storage.join(self.out, "qa")
        for (kind, split), w in sorted(writers.items()):
            size = w.close()
            stats.shards.append(
                {"path": posixpath.relpath(w.uri, qa), "kind": kind, "split": split, "rows": w.rows, "bytes": size}
            )
        return stats


# ---- the whole data set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QASummary:
    """What a run wrote: scenes seen, scenes failed, rows per split and question type, rows pruned."""

    num_scenes: int
    num_failed: int
    counts: dict[str, dict[str, int]]  # split -> question_type -> rows
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> question_type -> rows pruned
    num_shards: int = 0

    @property
    def num_rows(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def _nested(counters: dict[str, Counter]) -> dict[str, dict[str, int]]:
    return {k: dict(sorted(c.items())) for k, c in sorted(counters.items()) if c}


def task_set_name(tasks: Sequence[str]) -> str:
    """The name of the task set ``tasks`` is (``official``, ``extended``, ``all``), else ``custom``."""
    return next((name for name, names in TASK_SETS.items() if set(names) == set(tasks)), "custom")


def write_outputs(
    out: str,
    config: QAConfig,
    scenes: Sequence[SceneRef],
    failures: Sequence[SceneResult],
    dataset: DatasetConfig = DatasetConfig(),
    map_fn: Callable = map,
) -> QASummary:
    """Measures answer bias (and debiases), writes every shard group, the manifest and the card.

    Args:
        scenes: the run's scenes; those in ``failures`` are left out, the others must be cached.
        map_fn: ``map_fn(fn, items)`` -> ``fn(item)`` per item in any order (``map``, or Ray).
    """
    groups = plan_groups(out, config, scenes, {f.scene_dir for f in failures}, dataset.scenes_per_shard)
    bias = measure_bias(
        groups,
        read_group_rows,
        config.seed,
        map_fn,
        debias=dataset.debias,
        tolerance=dataset.debias_tolerance,
        max_rounds=dataset.debias_rounds,
    )
    total = GroupStats(-1)
    for stats in map_fn(WriteGroup(out, config.seed, config.prompt, bias.rounds), groups):
        total.shards += stats.shards
        for name in ("counts", "datasets", "removed", "letters"):
            for key, counter in getattr(stats, name).items():
                getattr(total, name)[key].update(counter)
    shards = sorted(total.shards, key=lambda s: s["path"])
    written = {storage.join(out, "qa", s["path"]) for s in shards}
    for kind in KINDS:  # files of an earlier run (other splits, more groups, the one-file layout)
        for stale in storage.list_files(storage.join(out, "qa", kind)):
            if stale not in written:
                storage.remove(stale)
    summary = QASummary(len(scenes), len(failures), _nested(total.counts), _nested(total.removed), len(shards))
    manifest = build_manifest(config, dataset, summary, _nested(total.datasets), _nested(total.letters), shards, bias)
    storage.write_json(storage.join(out, "qa", "manifest.json"), manifest)
    storage.write_text(storage.join(out, "qa", "README.md"), dataset_card(manifest))
    return summary


def _schema(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def build_manifest(
    config: QAConfig,
    dataset: DatasetConfig,
    summary: QASummary,
    datasets: dict,
    letters: dict,
    shards: list[dict],
    bias: BiasResult,
) -> dict:
    splits = sorted({s["split"] for s in shards})
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "task_set": task_set_name(config.tasks),
        "tasks": list(config.tasks),
        "caps": {t: config.cap(t) for t in config.tasks},
        "preset": config.preset,
        "num_frames": config.num_frames,
        "route_planner": config.route_planner,
        "vocabulary": config.vocabulary,
        "vocabulary_names": vocabulary_tables(config.vocabulary),
        "templates": config.templates,
        "config_fingerprint": config.fingerprint(),
        "num_scenes": summary.num_scenes,
        "num_failed": summary.num_failed,
        "num_rows": summary.num_rows,
        "counts": summary.counts,
        "counts_by_dataset": datasets,
        "splits": splits,
        "layout": {kind: {split: f"{kind}/{split}/*.parquet" for split in splits} for kind in KINDS},
        "schema": {kind: _schema(schema) for kind, schema in SCHEMAS.items()},
        "scenes_per_shard": dataset.scenes_per_shard,
        "num_shards": len(shards),
        "shards": shards,
        "letter_balancing": "per question type within each shard group "
        f"({dataset.scenes_per_shard} scenes in id order)",
        "letters": letters,
        "bias": bias.report,
        "debias": {
            "applied": dataset.debias,
            "tolerance": dataset.debias_tolerance,
            "rounds": len(bias.rounds.rounds),
            "removed": summary.removed,
            "removed_total": sum(sum(c.values()) for c in summary.removed.values()),
            "before": bias.before,
        },
    }


# ---- the dataset card ------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _bias_table(figures: dict) -> list[str]:
    rows = [
        [name, t["metric"], t["rows_fit"], t["rows_held_out"], _pct(t["chance"]), _pct(t["noise"]),
         *(_pct(t[b]) for b in BASELINES)]  # fmt: skip
        for name, t in figures["question_types"].items()
    ]
    mean = figures["mean"]
    rows.append(["**mean**", "", figures["rows_fit"], figures["rows_held_out"], _pct(mean["chance"]), "",
                 *(_pct(mean[b]) for b in BASELINES)])  # fmt: skip
    header = ["question type", "metric", "rows fitted", "rows held out", "chance", "± (2 SE)", *BASELINES]
    return _table(header, rows)


def dataset_card(manifest: dict) -> str:
    """``README.md`` of the data set: a Hugging Face YAML header (configs and splits) and the
    features, counts, settings and blind-baseline figures of ``manifest``."""
    splits = manifest["splits"]
    files = "{" + ", ".join(f"{s!r}: {manifest['layout']['benchmark'][s]!r}" for s in splits) + "}"
    lines = ["---", f"pretty_name: VLM-3R spatial QA ({manifest['generator_version']}, seed {manifest['seed']})"]
    lines += ["task_categories:", "- visual-question-answering", "tags:", "- spatial-reasoning", "- video", "- 3d"]
    lines.append("configs:")
    for kind in KINDS:
        lines.append(f"- config_name: {kind}")
        if kind == "benchmark":
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {kind}/{split}/*.parquet"]
    lines += ["---", ""]
    lines += [
        "# VLM-3R spatial question-answer data",
        "",
        "Spatial and spatio-temporal questions about videos of indoor scenes, in the VSI-Bench / "
        "VSTI-Bench row format, generated from each scene's 3D scene graph by `jobs/generate_qa.py`: "
        "every answer is computed exactly from the annotated geometry and camera poses.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| generator version | `{manifest['generator_version']}` |",
        f"| seed | {manifest['seed']} |",
        f"| task set | `{manifest['task_set']}` ({len(manifest['tasks'])} tasks) |",
        f"| templates | `{manifest['templates']}` |",
        f"| vocabulary | `{manifest['vocabulary']}` |",
        f"| model preset, frames per video | `{manifest['preset']}`, {manifest['num_frames']} |",
        f"| route planner | `{manifest['route_planner']}` |",
        f"| scenes | {manifest['num_scenes']} ({manifest['num_failed']} failed) |",
        f"| rows | {manifest['num_rows']} in {manifest['num_shards']} parquet files |",
        f"| config fingerprint | `{manifest['config_fingerprint']}` |",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        f'rows = load_dataset("parquet", data_files={files})',
        "# or, from this folder: load_dataset(<this folder>, \"benchmark\") / (<this folder>, \"conversations\")",
        "```",
        "",
        "Every split is a folder of parquet files (`<kind>/<split>/part-<group>.parquet`, one per "
        f"group of {manifest['scenes_per_shard']} scenes); `manifest.json` lists each file with its "
        "rows and bytes. The jobs of this system take the folder: `jobs/evaluate.py --benchmark "
        "benchmark/<split>`, `jobs/train.py --qa conversations/train`.",
        "",
        "## Features",
        "",
    ]
    for kind in KINDS:
        types = {f["name"]: f["type"] for f in manifest["schema"][kind]}
        lines += [f"`{kind}`:", ""]
        lines += _table(["field", "type", "meaning"], [[f"`{n}`", f"`{t}`", FEATURES[kind].get(n, "")] for n, t in types.items()])
        lines.append("")
    lines += ["## Counts", "", "Rows per question type and split:", ""]
    question_types = sorted({t for c in manifest["counts"].values() for t in c})
    lines += _table(
        ["question type", *splits, "total"],
        [[t, *(manifest["counts"].get(s, {}).get(t, 0) for s in splits),
          sum(manifest["counts"].get(s, {}).get(t, 0) for s in splits)] for t in question_types],  # fmt: skip
    )
    lines += ["", "Rows per source data set and split:", ""]
    sources = sorted({d for c in manifest["counts_by_dataset"].values() for d in c})
    lines += _table(
        ["dataset", *splits],
        [[d, *(manifest["counts_by_dataset"].get(s, {}).get(d, 0) for s in splits)] for d in sources],
    )
    lines += [
        "",
        "## Answer letters",
        "",
        f"Multiple-choice answers are balanced over the letters {manifest['letter_balancing']}: within a "
        "group, each correct choice goes to the letter its question type has used least so far.",
        "",
    ]
    lines += _table(
        ["question type", *LETTERS],
        [[t, *(c.get(letter, 0) for letter in LETTERS)] for t, c in sorted(manifest["letters"].items())],
    )
    bias, debias = manifest["bias"], manifest["debias"]
    lines += [
        "",
        "## Answer bias: blind baselines",
        "",
        "How well a model that never sees the video answers, per question type, on held-out rows "
        f"({bias['held_out']}). `frequency`: the choice most often correct for the type (numeric: "
        "the median answer); `category`: the same per object category; `text`: naive Bayes over the "
        "question's words and word pairs. Percent accuracy (multiple choice) or mean relative accuracy (numeric); "
        "chance is 1/choices, and for numeric answers the `frequency` baseline itself; ± is two standard "
        "errors of a score at chance on the held-out rows.",
        "",
    ]
    lines += _bias_table(bias)
    if debias["applied"]:
        lines += [
            "",
            f"Debiased: {debias['rounds']} pruning round(s) removed {debias['removed_total']} rows (tolerance "
            f"{_pct(debias['tolerance'])} points above chance); the table above is after pruning. Before:",
            "",
        ]
        lines += _bias_table(debias["before"])
        removed_types = sorted({t for c in debias["removed"].values() for t in c})
        lines += ["", "Rows removed:", ""]
        lines += _table(
            ["question type", *splits],
            [[t, *(debias["removed"].get(s, {}).get(t, 0) for s in splits)] for t in removed_types],
        )
    else:
        lines += ["", "Not debiased (`--debias` prunes rows until these sit near chance)."]
    return "\n".join(lines) + "\n"
