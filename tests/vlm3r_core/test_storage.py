"""The storage layer on local folders, file:// URIs and a real S3 endpoint (moto_server)."""

import os

import pyarrow as pa
import pytest

from vlm3r_core import storage


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "file":
        return f"file://{tmp_path}/root"
    return request.getfixturevalue("moto_s3") + "/prefix"


def test_round_trips_bytes_json_jsonl_parquet(root):
    storage.write_bytes(storage.join(root, "a", "b.bin"), b"\x00\x01")
    assert storage.read_bytes(storage.join(root, "a/b.bin")) == b"\x00\x01"
    storage.write_json(storage.join(root, "x.json"), {"k": [1, 2]})
    assert storage.read_json(storage.join(root, "x.json")) == {"k": [1, 2]}
    storage.write_jsonl(storage.join(root, "rows.jsonl"), [{"i": 0}, {"i": 1}])
    assert storage.read_jsonl(storage.join(root, "rows.jsonl")) == [{"i": 0}, {"i": 1}]
    table = pa.table({"id": [1, 2], "name": ["a", "b"]})
    storage.write_parquet(storage.join(root, "t", "part-0.parquet"), table)
    storage.write_parquet(storage.join(root, "t", "part-1.parquet"), table)
    assert storage.read_parquet(storage.join(root, "t", "part-0.parquet")).equals(table)
    assert storage.read_parquet(storage.join(root, "t")).num_rows == 4


def test_lists_exists_and_removes(root):
    for name in ("s/1.json", "s/2.json", "s/deep/3.json", "s/other.txt"):
        storage.write_text(storage.join(root, name), "{}")
    listed = storage.list_files(storage.join(root, "s"), ".json")
    assert listed == [storage.join(root, p) for p in ("s/1.json", "s/2.json", "s/deep/3.json")]
    assert storage.exists(storage.join(root, "s/1.json"))
    assert not storage.exists(storage.join(root, "s/missing.json"))
    assert storage.list_files(storage.join(root, "nothing-here")) == []
    storage.remove(storage.join(root, "s"))
    assert storage.list_files(storage.join(root, "s")) == []


def test_file_versions_change_when_a_file_is_rewritten(root):
    for name in ("s/a/scene.json", "s/b/scene.json", "s/b/video.mp4"):
        storage.write_text(storage.join(root, name), '{"v": 1}')
    first = storage.list_file_versions(storage.join(root, "s"), "/scene.json")
    assert list(first) == storage.list_files(storage.join(root, "s"), "/scene.json")
    assert storage.list_file_versions(storage.join(root, "s"), "/scene.json") == first  # stable
    storage.write_text(storage.join(root, "s/b/scene.json"), '{"v": 22}')
    second = storage.list_file_versions(storage.join(root, "s"), "/scene.json")
    a, b = (storage.join(root, f"s/{n}/scene.json") for n in "ab")
    assert second[a] == first[a] and second[b] != first[b]
    assert storage.list_file_versions(storage.join(root, "nothing-here")) == {}


def test_missing_and_invalid_files_name_the_uri(root):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        storage.read_json(storage.join(root, "missing.json"))
    storage.write_text(storage.join(root, "bad.json"), "{not json")
    with pytest.raises(ValueError, match="bad.json: invalid JSON"):
        storage.read_json(storage.join(root, "bad.json"))
    storage.write_text(storage.join(root, "bad.jsonl"), '{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        storage.read_jsonl(storage.join(root, "bad.jsonl"))


def test_absolute_resolves_local_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("data/x") == f"{tmp_path}/data/x"
    assert storage.absolute(f"file://{tmp_path}/y") == f"{tmp_path}/y"
    assert storage.absolute("s3://bucket/prefix") == "s3://bucket/prefix"


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    storage.write_bytes(str(target), b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
