"""benchmarks/bench_serve_autoscaling.py at minimal size without a cluster: the videos of its phases,
its figures from a recorded run, the plot, and the replica counts it reads from the dashboard's Serve
API (a recorded response). The run on a real cluster (minutes of load) is
tests/cluster/test_local_cluster.py with --cluster-full (make cluster-test)."""

from __future__ import annotations

from benchmarks.bench_serve_autoscaling import (
    Request,
    Run,
    Sample,
    ServeStatus,
    phase_videos,
    plot,
    report,
    summarize,
)


def _run() -> Run:
    """Encoder load 10-40 s (its 2nd replica from 20 s, back to 1 at 50 s), LLM load 60-90 s."""
    run = Run()
    run.phases = [{"name": "encoder", "start": 10.0, "end": 40.0}, {"name": "cool-down", "start": 40.0, "end": 55.0},
                  {"name": "llm", "start": 60.0, "end": 90.0}, {"name": "cool-down", "start": 90.0, "end": 100.0}]  # fmt: skip
    for t in range(0, 101):
        enc = 2 if 20 <= t < 50 else 1
        llm = 2 if 75 <= t < 95 else 1
        run.samples.append(Sample(float(t), {"GeometryEncoder": enc, "LanguageModel": llm},
                                  {"GeometryEncoder": enc, "LanguageModel": llm},
                                  {"GeometryEncoder": ["worker-1", "worker-2"][:enc], "LanguageModel": ["worker-2"]}))  # fmt: skip
    run.requests = [Request("encoder", float(t), 4.0 if t < 20 else 1.0, True, 1) for t in range(10, 38)]
    run.requests += [Request("llm", float(t), 3.0 if t < 75 else 1.5, True, 128) for t in range(60, 88)]
    run.requests.append(Request("llm", 89.0, 0.1, False, error="APIConnectionError: boom"))
    return run


def test_summary_says_which_deployment_scaled_when_and_latency_before_and_after(tmp_path, capsys):
    summary = summarize(_run())
    enc, llm = summary["encoder"], summary["llm"]
    assert enc["max_running"] == {"GeometryEncoder": 2, "LanguageModel": 1}
    assert llm["max_running"] == {"GeometryEncoder": 1, "LanguageModel": 2}
    assert enc["scaled_up_after_s"] == 10.0 and enc["back_to_one_after_load_s"] == 10.0
    assert llm["scaled_up_after_s"] == 15.0 and llm["back_to_one_after_load_s"] == 5.0
    assert enc["p50_one_replica_s"] == 4.0 and enc["p50_two_replicas_s"] == 1.0
    assert (llm["requests"], llm["failed"], llm["completion_tokens_mean"]) == (29, 1, 128.0)
    assert enc["replica_nodes"] == ["worker-1", "worker-2"]
    report(summary)
    out = capsys.readouterr().out
    assert "GeometryEncoder up to 2 replicas" in out and "LanguageModel stayed at 1" in out
    assert "(1-replica/2-replica p50: 4.00x)" in out
    plot(_run(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "plot.png").stat().st_size < 100_000


def test_replica_counts_come_from_the_serve_api_running_replicas():
    response = {"applications": {"vlm3r": {"status": "RUNNING", "deployments": {
        "GeometryEncoder": {"target_num_replicas": 2, "replicas": [
            {"state": "RUNNING", "node_id": "aa11"}, {"state": "STARTING", "node_id": "bb22"}]},
        "LanguageModel": {"target_num_replicas": 1, "replicas": [{"state": "RUNNING", "node_id": "bb22"}]},
    }}}}  # fmt: skip

    class Recorded(ServeStatus):
        def read(self) -> dict:
            return response

    sample = Recorded("http://unused", "token", "vlm3r", {"aa11": "worker-1", "bb22": "worker-2"}).sample(3.0)
    assert sample.running == {"GeometryEncoder": 1, "LanguageModel": 1}
    assert sample.target == {"GeometryEncoder": 2, "LanguageModel": 1}
    assert sample.nodes == {"GeometryEncoder": ["worker-1"], "LanguageModel": ["worker-2"]}


def test_encoder_load_sends_new_videos_and_llm_load_one_repeated_video():
    videos = phase_videos(3, 4)
    assert len(set(videos["encoder"])) == 3  # a new video per request: the encoder works every time
    assert len(videos["llm"]) == 3 and len(set(videos["llm"])) == 1  # one video: its tokens come from the cache
    assert not set(videos["llm"]) & set(videos["encoder"]) and not set(videos["warm-up"]) & set(videos["encoder"])
    assert all(v.startswith("data:video/") for vs in videos.values() for v in vs)
