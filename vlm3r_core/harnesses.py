"""Benchmarks for other evaluation harnesses: any benchmark this system reads, as an lmms-eval task
folder and as a VLMEvalKit-style TSV, so other models can be evaluated on data made here.

    python -m vlm3r_core.harnesses --benchmark ./vlm3r-data/qa/benchmark/val \\
        --out ./vlm3r-data/export [--name vlm3r_spatial] [--split val] [--videos-root DIR]

writes, under ``--out``:

- ``lmms_eval/<name>/``: ``test.parquet`` (the rows, official field names, the video as an
  absolute path in ``video``), ``utils.py`` and one task YAML per benchmark present
  (``<name>_vsibench.yaml``, ``<name>_vstibench.yaml``). Copy the folder into
  ``lmms_eval/tasks/`` and run ``lmms_eval --tasks <name>_vsibench ...``. The YAML follows the
  official VSI-Bench task (``generate_until``, greedy, ``max_new_tokens`` 16, the same
  ``lmms_eval_specific_kwargs`` prompts); ``utils.py`` is self-contained (numpy only) and scores
  with the official rules exactly as :mod:`vlm3r_core.metrics` does (whitespace stripped, first
  token, letter match against ``mc_answer`` else ``ground_truth``, MRA over 0.50..0.95 with
  ``<=``; VSI-Bench merges the relative-direction levels, VSTI-Bench averages every type).
- ``<name>.tsv``: VLMEvalKit's MCQ/video layout: ``index``, ``video`` (the video id),
  ``video_path``, ``question``, one column per option letter (``A``, ``B``, ... with the option
  text), ``answer`` (the letter, or the value for numeric questions), ``category`` (the question
  type), and our fields (``id``, ``dataset``, ``scene_name``, ``question_type``, ``options`` as
  JSON, ``ground_truth``, ``mc_answer``, ``prompt``: the full official-evaluation text).

Videos are referenced, not copied: local paths stay usable where the harness runs; ``s3://``
videos must be copied to a local folder first (``--videos-root`` then rewrites the paths).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from vlm3r_core import storage
from vlm3r_core.cli import run_job
from vlm3r_core.evaluation import BenchmarkRow, read_benchmark
from vlm3r_core.metrics import (
    MRA_THRESHOLDS,
    NUMERIC_QUESTION_UNITS,
    REL_DIRECTION_LEVELS,
    VSTI_PREFIXES,
    benchmark_of,
)
from vlm3r_core.prompting import MC_POST_PROMPT, NUMERIC_POST_PROMPT, PRE_PROMPT, format_question

__all__ = ["ExportConfig", "export_benchmark", "lmms_eval_utils_source", "write_lmms_eval_task", "write_vlmevalkit_tsv"]


@dataclass(frozen=True)
class ExportConfig:
    """Exporting a benchmark to other harnesses.

    Args:
        benchmark: benchmark rows: a parquet file or folder, JSON or JSONL (ours or the official).
        out: output folder URI.
        name: task name prefix (lmms-eval task ``<name>_vsibench``, ``<name>.tsv``).
        split: keep only rows of this split.
        videos_root: where ``{dataset}/{scene_name}.mp4`` lives for official benchmark files.
        max_new_tokens: the tasks' answer length limit (the official tasks: 16).
    """

    benchmark: str
    out: str
    name: str = "vlm3r_spatial"
    split: str | None = None
    videos_root: str | None = None
    max_new_tokens: int = 16

    def __post_init__(self):
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"name must be letters, digits and underscores, got {self.name!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


# lmms-eval ------------------------------------------------------------------------------------------

_UTILS_TEMPLATE = '''"""Scoring for the {name} tasks, exported by vlm3r_core.harnesses (VLM-3R at scale).

Self-contained (numpy only). The official VSI-Bench / VSTI-Bench rules: the answer is stripped of
surrounding whitespace, its first space-separated token taken and a trailing "." removed;
multiple choice compares that letter case-insensitively with mc_answer (else ground_truth);
numeric answers score the mean relative accuracy over the thresholds 0.50, 0.55, ..., 0.95
(|pred - gt| / gt <= 1 - threshold; unparsable answers and a ground truth of 0 score 0).
VSI-Bench averages its three relative-direction levels into one task before the overall mean;
VSTI-Bench averages every question type. Scores are x 100.
"""

import os

import numpy as np

PRE_PROMPT = {pre_prompt!r}
MC_POST_PROMPT = {mc_post_prompt!r}
NUMERIC_POST_PROMPT = {numeric_post_prompt!r}
NUMERIC_QUESTION_TYPES = {numeric_types!r}
REL_DIRECTION_LEVELS = {rel_direction_levels!r}
VSTI_PREFIXES = {vsti_prefixes!r}
MRA_THRESHOLDS = np.array({thresholds!r})
VIDEOS_ROOT = os.environ.get("VLM3R_VIDEOS_ROOT", "")  # prefix for relative video paths


def benchmark_of(question_type):
    return "vstibench" if question_type.startswith(VSTI_PREFIXES) else "vsibench"


def doc_to_visual(doc):
    video = doc["video"]
    if VIDEOS_ROOT and not os.path.isabs(video) and "://" not in video:
        video = os.path.join(VIDEOS_ROOT, video)
    return [video]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {{}}
    pre_prompt = kwargs.get("pre_prompt", "") or PRE_PROMPT
    if doc["question_type"] in NUMERIC_QUESTION_TYPES:
        post_prompt = kwargs.get("na_post_prompt", "") or NUMERIC_POST_PROMPT
        return "\\n".join([pre_prompt, doc["question"], post_prompt])
    post_prompt = kwargs.get("mca_post_prompt", "") or MC_POST_PROMPT
    return "\\n".join([pre_prompt, doc["question"], "Options:", *doc["options"], post_prompt])


def parse_answer(prediction):
    return prediction.strip().split(" ")[0].rstrip(".").strip()


def mean_relative_accuracy(prediction, ground_truth):
    relative_error = abs(prediction - ground_truth) / ground_truth
    return float(np.mean(relative_error <= 1 - MRA_THRESHOLDS))


def score(doc, prediction):
    parsed = parse_answer(prediction)
    if doc["question_type"] not in NUMERIC_QUESTION_TYPES:
        target = doc.get("mc_answer") or doc["ground_truth"]
        return 1.0 if parsed.lower() == target.lower() else 0.0
    try:
        return mean_relative_accuracy(float(parsed), float(doc["ground_truth"]))
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0


def _result(doc, results):
    prediction = results[0] if results else ""
    return {{"id": doc["id"], "question_type": doc["question_type"], "prediction": prediction,
             "score": score(doc, prediction)}}


def process_results_vsibench(doc, results):
    return {{"vsibench_score": _result(doc, results)}}


def process_results_vstibench(doc, results):
    return {{"vstibench_score": _result(doc, results)}}


def _per_type(results):
    by_type = {{}}
    for r in results:
        by_type.setdefault(r["question_type"], []).append(r["score"])
    return {{t: float(np.mean(s)) for t, s in sorted(by_type.items())}}


def task_scores(results, benchmark):
    """Per task (x 100), as the official aggregation forms them."""
    tasks = _per_type(results)
    if benchmark == "vsibench":
        levels = [t for t in REL_DIRECTION_LEVELS if t in tasks]
        if levels:
            tasks["object_rel_direction"] = float(np.mean([tasks.pop(t) for t in levels]))
    return {{t: 100 * v for t, v in sorted(tasks.items())}}


def aggregate_vsibench(results):
    return float(np.mean(list(task_scores(results, "vsibench").values())))


def aggregate_vstibench(results):
    return float(np.mean(list(task_scores(results, "vstibench").values())))


def process_docs_vsibench(dataset):
    return dataset.filter(lambda doc: benchmark_of(doc["question_type"]) == "vsibench")


def process_docs_vstibench(dataset):
    return dataset.filter(lambda doc: benchmark_of(doc["question_type"]) == "vstibench")
'''


def lmms_eval_utils_source(name: str) -> str:
    """The ``utils.py`` of the exported lmms-eval tasks (constants taken from :mod:`vlm3r_core.metrics`
    and :mod:`vlm3r_core.prompting`, so the exported rules are ours)."""
    return _UTILS_TEMPLATE.format(
        name=name,
        pre_prompt=PRE_PROMPT,
        mc_post_prompt=MC_POST_PROMPT,
        numeric_post_prompt=NUMERIC_POST_PROMPT,
        numeric_types=tuple(sorted(NUMERIC_QUESTION_UNITS)),
        rel_direction_levels=tuple(REL_DIRECTION_LEVELS),
        vsti_prefixes=tuple(VSTI_PREFIXES),
        thresholds=[float(t) for t in MRA_THRESHOLDS],
    )


def _task_yaml(task: str, benchmark: str, data_file: str, max_new_tokens: int) -> str:
    q = json.dumps  # YAML accepts JSON strings: safe quoting of paths and prompts
    return "\n".join([
        "dataset_path: parquet",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {q(data_file)}",
        f"task: {task}",
        "test_split: test",
        "output_type: generate_until",
        f"process_docs: !function utils.process_docs_{benchmark}",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        'doc_to_target: "ground_truth"',
        "generation_kwargs:",
        f"  max_new_tokens: {max_new_tokens}",
        "  temperature: 0",
        "  top_p: 1.0",
        "  num_beams: 1",
        "  do_sample: false",
        f"process_results: !function utils.process_results_{benchmark}",
        "metric_list:",
        f"  - metric: {benchmark}_score",
        f"    aggregation: !function utils.aggregate_{benchmark}",
        "    higher_is_better: true",
        "lmms_eval_specific_kwargs:",
        "  default:",
        '    pre_prompt: ""',
        f"    mca_post_prompt: {q(MC_POST_PROMPT)}",
        f"    na_post_prompt: {q(NUMERIC_POST_PROMPT)}",
        "metadata:",
        "  - version: 0.0",
        "",
    ])  # fmt: skip


def _rows_table(rows: Sequence[BenchmarkRow]) -> pa.Table:
    return pa.table({
        "id": [r.id for r in rows],
        "dataset": [r.dataset for r in rows],
        "scene_name": [r.scene_name for r in rows],
        "question_type": [r.question_type for r in rows],
        "question": [r.question for r in rows],
        "options": pa.array([list(r.options) for r in rows], pa.list_(pa.string())),
        "ground_truth": [r.ground_truth for r in rows],
        "mc_answer": pa.array([r.mc_answer for r in rows], pa.string()),
        "video": [r.video for r in rows],
        "frame_indices": pa.array([list(r.frame_indices) for r in rows], pa.list_(pa.int64())),
        "pruned": pa.array([r.pruned for r in rows], pa.bool_()),
    })  # fmt: skip


def write_lmms_eval_task(rows: Sequence[BenchmarkRow], folder: str, name: str, max_new_tokens: int = 16) -> list[str]:
    """Writes the lmms-eval task folder (see the module docstring); returns the task names."""
    data_file = storage.join(folder, "test.parquet")
    storage.write_parquet(data_file, _rows_table(rows))
    storage.write_text(storage.join(folder, "utils.py"), lmms_eval_utils_source(name))
    local = data_file if storage.is_remote(data_file) else storage.filesystem(data_file)[1]
    tasks = []
    for benchmark in sorted({benchmark_of(r.question_type) for r in rows}):
        task = f"{name}_{benchmark}"
        storage.write_text(storage.join(folder, f"{task}.yaml"), _task_yaml(task, benchmark, local, max_new_tokens))
        tasks.append(task)
    return tasks


# VLMEvalKit -----------------------------------------------------------------------------------------


def write_vlmevalkit_tsv(rows: Sequence[BenchmarkRow], uri: str) -> None:
    """Writes the VLMEvalKit-style TSV (see the module docstring)."""
    letters = sorted({o.split(".", 1)[0].strip() for r in rows for o in r.options})
    columns = ["index", "id", "video", "video_path", "dataset", "scene_name", "question", *letters, "answer",
               "category", "question_type", "options", "ground_truth", "mc_answer", "prompt"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for index, r in enumerate(rows):
        texts = {o.split(".", 1)[0].strip(): o.split(".", 1)[-1].strip() for o in r.options}
        answer = (r.mc_answer or r.ground_truth) if r.options else r.ground_truth
        writer.writerow([
            index, r.id, r.video_id, r.video, r.dataset, r.scene_name, r.question,
            *[texts.get(letter, "") for letter in letters], answer, r.question_type, r.question_type,
            json.dumps(list(r.options)), r.ground_truth, r.mc_answer or "", format_question(r.question, r.options),
        ])  # fmt: skip
    storage.write_text(uri, buf.getvalue())


# The tool -------------------------------------------------------------------------------------------


def export_benchmark(cfg: ExportConfig) -> int:
    """Reads the benchmark and writes both exports; prints where they are."""
    rows = read_benchmark(cfg.benchmark, cfg.videos_root, cfg.split)
    if not rows:
        raise ValueError(f"no benchmark rows in {cfg.benchmark}")
    folder = storage.join(cfg.out, "lmms_eval", cfg.name)
    tasks = write_lmms_eval_task(rows, folder, cfg.name, cfg.max_new_tokens)
    tsv = storage.join(cfg.out, f"{cfg.name}.tsv")
    write_vlmevalkit_tsv(rows, tsv)
    print(f"[export] {len(rows)} questions -> lmms-eval tasks {', '.join(tasks)} in {folder}; VLMEvalKit TSV {tsv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job("export", argv, (ExportConfig,), export_benchmark, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
