"""datagen.dataset: parquet shards per split with a manifest and a dataset card, letters balanced per shard
group whatever the order groups are written in, debiased writing, and every reader of the system (Hugging
Face ``datasets``, training, evaluation) loading the shards."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.dataset import ShardGroup, WriteGroup, plan_groups, split_uri, write_outputs
from datagen.qa import SCENE_ROW_SCHEMA, DatasetConfig, QAConfig, SceneResult, scene_cache_uri
from tests.datagen.test_bias import _planted_scene
from vlm3r_core import storage
from vlm3r_core.evaluation import read_benchmark
from vlm3r_core.scene import SceneRef
from vlm3r_core.train_data import find_qa_manifest, read_training_examples

CONFIG = QAConfig(route_planner="builtin")


def _cache_scenes(out: str, n: int, per_type: int = 12) -> list[SceneRef]:
    """``n`` scenes whose pre-letter rows are already cached (as ``process_scene`` leaves them), every third val."""
    rng = np.random.default_rng(1)
    refs = []
    for i in range(n):
        ref = SceneRef(f"/data/scenes/synthetic/s{i:03d}", f"v{i}")
        rows = _planted_scene(rng, f"s{i:03d}", "val" if i % 3 == 0 else "train", per_type)
        storage.write_parquet(scene_cache_uri(out, CONFIG, ref), pa.Table.from_pylist(rows, schema=SCENE_ROW_SCHEMA))
        refs.append(ref)
    return refs


def _files(out: str) -> dict[str, bytes]:
    qa = storage.join(out, "qa")
    files = [f for kind in ("benchmark", "conversations") for f in storage.list_files(storage.join(qa, kind))]
    return {f[len(qa) + 1 :]: storage.read_bytes(f) for f in [*files, f"{qa}/manifest.json", f"{qa}/README.md"]}


def _reversed_map(fn, items):
    """Another worker count's finishing order: last group first."""
    return [fn(item) for item in reversed(list(items))]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("qa"))
    refs = _cache_scenes(out, 20)
    failed = SceneResult(refs[5].dir, 0, "SceneValidationError: broken")
    summary = write_outputs(out, CONFIG, refs, [failed], DatasetConfig(scenes_per_shard=8))
    return out, refs, failed, summary


def test_layout_manifest_and_card(written):
    out, refs, _, summary = written
    manifest = storage.read_json(f"{out}/qa/manifest.json")
    # 19 scenes in id order -> groups of 8, 8, 3; each group writes one file per split it has and kind.
    paths = sorted(s["path"] for s in manifest["shards"])
    assert paths == sorted(f"{kind}/{split}/part-{g:05d}.parquet" for kind in ("benchmark", "conversations")
                           for split in ("train", "val") for g in range(3))  # fmt: skip
    assert summary.num_shards == manifest["num_shards"] == 12 and manifest["scenes_per_shard"] == 8
    for shard in manifest["shards"]:
        table = pq.read_table(f"{out}/qa/{shard['path']}")
        assert table.num_rows == shard["rows"]
        if shard["kind"] == "benchmark":
            assert set(table.column("split").to_pylist()) == {shard["split"]}
    rows = 19 * 4 * 12
    assert manifest["num_rows"] == summary.num_rows == rows and manifest["num_failed"] == 1
    assert sum(s["rows"] for s in manifest["shards"] if s["kind"] == "benchmark") == rows
    assert manifest["counts"]["val"]["object_size_estimation"] == 7 * 12  # s000, s003, ..., s018
    assert manifest["counts_by_dataset"] == {s: {"synthetic": sum(c.values())} for s, c in manifest["counts"].items()}
    assert manifest["layout"]["conversations"]["train"] == "conversations/train/*.parquet"
    assert [f["name"] for f in manifest["schema"]["benchmark"]][:3] == ["id", "dataset", "scene_name"]
    assert manifest["task_set"] == "official" and manifest["generator_version"] == "vlm3r-qa-2"
    bias = manifest["bias"]["question_types"]
    assert bias["object_rel_direction_medium"]["frequency"] > 0.6 and not manifest["debias"]["applied"]
    card = storage.read_text(f"{out}/qa/README.md")
    assert card.startswith("---\n") and "  - split: val\n    path: benchmark/val/*.parquet" in card
    assert "| object_rel_direction_medium | 144 | 84 | 228 |" in card  # rows per type and split (s005 failed)
    assert "| synthetic | 576 | 336 |" in card  # per source data set
    assert "## Answer bias: blind baselines" in card and "| object_rel_direction_hard | accuracy |" in card


def test_letters_are_balanced_per_group_whatever_order_groups_are_written_in(written, tmp_path):
    out, refs, failed, _ = written
    other = str(tmp_path / "other")
    _cache_scenes(other, 20)
    write_outputs(other, CONFIG, refs, [failed], DatasetConfig(scenes_per_shard=8), _reversed_map)
    assert _files(other) == _files(out)
    letters: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for split in ("train", "val"):
        for f in storage.list_files(split_uri(out, "benchmark", split)):
            for r in pq.read_table(f).to_pylist():
                if r["mc_answer"]:
                    letters[(f.rsplit("/", 1)[1], r["question_type"])][r["mc_answer"]] += 1
    for (_, question_type), counts in letters.items():
        n = {"object_rel_direction_easy": 2, "object_rel_direction_medium": 3}.get(question_type, 4)
        assert max(counts.values()) - min(counts[letter] for letter in "ABCD"[:n]) <= 1, (question_type, counts)


def test_groups_follow_the_id_order_of_scenes_not_the_listing():
    refs = [SceneRef(f"/d/scenes/{ds}/{name}", "v") for ds, name in
            [("scannet", "b"), ("arkitscenes", "z"), ("scannet", "a-b"), ("scannet", "a")]]  # fmt: skip
    groups = plan_groups("/o", CONFIG, refs, {"/d/scenes/scannet/b"}, 2)
    order = [c.split("/")[-2] + "/" + c.split("/")[-1].rsplit("-", 1)[0] for g in groups for c in g.caches]
    assert order == ["arkitscenes/z", "scannet/a-b", "scannet/a"]  # "a-b/..." < "a/..." as row ids sort
    assert [g.index for g in groups] == [0, 1] and [len(g.caches) for g in groups] == [2, 1]


def test_a_writer_holds_one_row_group_at_a_time(tmp_path):
    out = str(tmp_path)
    refs = _cache_scenes(out, 3, per_type=30)
    group = ShardGroup(0, tuple(scene_cache_uri(out, CONFIG, r) for r in refs))
    stats = WriteGroup(out, 0, CONFIG.prompt, row_group_rows=50)(group)
    for shard in stats.shards:
        meta = pq.ParquetFile(f"{out}/qa/{shard['path']}").metadata
        assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 50
        assert meta.num_rows == shard["rows"] and meta.num_row_groups >= shard["rows"] // 50


def test_debiased_writing_prunes_rows_and_reports_them(written, tmp_path):
    out, refs, failed, plain = written
    debiased = str(tmp_path / "debiased")
    _cache_scenes(debiased, 20)
    storage.write_text(f"{debiased}/qa/benchmark/train.jsonl", "{}\n")  # the one-file layout of earlier runs
    storage.write_text(f"{debiased}/qa/conversations/val.jsonl", "{}\n")
    summary = write_outputs(debiased, CONFIG, refs, [failed], DatasetConfig(scenes_per_shard=8, debias=True))
    assert not storage.exists(f"{debiased}/qa/benchmark/train.jsonl")
    assert not storage.exists(f"{debiased}/qa/conversations/val.jsonl")
    manifest = storage.read_json(f"{debiased}/qa/manifest.json")
    removed = manifest["debias"]["removed_total"]
    assert manifest["debias"]["applied"] and manifest["debias"]["rounds"] >= 1 and removed > 0
    assert summary.num_rows == plain.num_rows - removed == manifest["num_rows"]
    assert "object_rel_direction_easy" not in {t for c in summary.removed.values() for t in c}
    for name, figures in manifest["bias"]["question_types"].items():
        checked = ("category", "text") if figures["metric"] == "MRA" else ("frequency", "category", "text")
        assert all(figures[b] <= figures["chance"] + 0.05 + figures["noise"] for b in checked), (name, figures)
    before = manifest["debias"]["before"]["question_types"]["object_rel_direction_medium"]
    assert before["frequency"] > 0.6
    assert "Debiased: " in storage.read_text(f"{debiased}/qa/README.md")


def test_the_jobs_and_hugging_face_datasets_read_the_shards(written):
    datasets = pytest.importorskip("datasets")
    out, _, _, summary = written
    qa = f"{out}/qa"
    files = {split: f"{qa}/benchmark/{split}/*.parquet" for split in ("train", "val")}
    loaded = datasets.load_dataset("parquet", data_files=files)
    assert {s: loaded[s].num_rows for s in loaded} == {s: sum(c.values()) for s, c in summary.counts.items()}
    assert loaded["val"].features["options"].feature.dtype == "string"
    conversations = datasets.load_dataset(qa, "conversations")  # the card's configs
    assert conversations["train"].num_rows == loaded["train"].num_rows
    assert conversations["train"][0]["conversations"][0]["from"] == "human"
    # training reads a split folder (and finds the manifest two folders up), evaluation likewise
    train = read_training_examples(split_uri(out, "conversations", "train"))
    assert [e.id for e in train] == loaded["train"]["id"]
    assert find_qa_manifest(split_uri(out, "conversations", "train")) == f"{qa}/manifest.json"
    first_shard = storage.list_files(split_uri(out, "conversations", "train"))[0]
    assert find_qa_manifest(first_shard) == f"{qa}/manifest.json"
    rows = read_benchmark(split_uri(out, "benchmark", "val"))
    assert [r.id for r in rows] == loaded["val"]["id"] and dataclasses.is_dataclass(rows[0])
