"""Precomputes the frozen-encoder tokens (CUT3R, optionally SigLIP) of every video into token shards.

    ray job submit -- python jobs/precompute_tokens.py --scenes s3://bucket/data --out s3://bucket/data \\
        --preset vlm3r-7b [--checkpoint s3://bucket/weights/cut3r_512_dpt_4_64.pth] [--num-frames 32] \\
        [--size 432] [--with-vision-features] [--batch-size 4] [--num-actors 8]

Also runs as plain ``python jobs/precompute_tokens.py --scenes ./vlm3r-data --out ./vlm3r-data
--preset tiny --with-vision-features`` with a local Ray. ``--scenes`` is a folder holding
``<dataset>/<scene_id>/scene.json`` (a data root, its ``scenes/`` or one dataset) or a ``.jsonl``
list of ``{"video_id", "video"}``. Ray Data decodes and samples the videos in CPU tasks and encodes
them on an actor pool (one GPU per actor when the cluster has GPUs, half a CPU otherwise; the model
is loaded once per actor); each actor batch becomes one shard, written by the actor, under
``<out>/tokens/<encoder>/`` (see ``vlm3r_core.tokens``). A video enters ``manifest.jsonl`` only
after its shard is written; re-running skips those videos (and first adopts shards an interrupted
run wrote but did not list). Each scene's video is checked against its ``scene.json`` (frame
count and size) before it is encoded. Videos that fail (unreadable, mismatched, a failed shard
write) go to ``errors.jsonl`` with the reason; the job goes on and they are tried again next run.
A shard set made by another encoder is refused. ``--export-3d`` also writes each encoded video's
CUT3R reconstruction (points.ply, points.glb, trajectory.json) under
``<out>/reconstructions/<dataset>/<scene_id>/``; a video whose export fails (no confident point)
keeps its tokens and gets a warning line. Ends with a one-line summary; every flag:
``--help``; exit codes: see ``vlm3r_core/cli.py``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import ray

from jobs.common import RayOptions, connect
from vlm3r_core import storage
from vlm3r_core.cli import parse, run_job
from vlm3r_core.geometry.reconstruction import ReconstructionConfig
from vlm3r_core.ledger import RunLedger, RunSummary
from vlm3r_core.precompute import (
    PrecomputeConfig,
    TokenEncoder,
    decode_videos,
    encoder_info,
    list_videos,
    model_config,
)
from vlm3r_core.tokens import list_token_shards, read_encoder_info, reconcile_manifest, token_dir

CONFIGS = (PrecomputeConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> PrecomputeConfig:
    return parse(argv, *CONFIGS)[0]


def precompute_tokens(cfg: PrecomputeConfig, ray_options: RayOptions) -> RunSummary:
    model_cfg = model_config(cfg.preset, cfg.checkpoint, cfg.size, cfg.num_frames)
    encoder = encoder_info(model_cfg, cfg.with_vision_features, cfg.dtype)
    out_dir = token_dir(cfg.out, encoder)
    if list_token_shards(out_dir) and (found := read_encoder_info(out_dir)) != encoder:
        raise ValueError(f"{out_dir} holds shards of another encoder ({found.to_json()}); this run is {encoder.to_json()}")
    ledger = RunLedger("precompute_tokens", out_dir, "video_id", done=reconcile_manifest(out_dir))
    with ledger:
        sources = {s.video_id: s for s in list_videos(cfg.scenes)}
        todo = ledger.plan(sources)
        print(f"[precompute_tokens] {len(sources)} videos, {len(sources) - len(todo)} already done, "
              f"encoding {len(todo)} with {encoder.name} -> {out_dir}", flush=True)  # fmt: skip
        shard_bytes: dict[str, int] = {}
        export = {}
        if cfg.export_3d:
            export = {"export_dir": storage.join(cfg.out, "reconstructions"),
                      "export": ReconstructionConfig(confidence_threshold=cfg.export_confidence)}  # fmt: skip
        exported = 0
        if todo:
            gpu = connect(ray_options)
            num_gpus = int(ray.cluster_resources().get("GPU", 0)) if gpu else 0
            ds = ray.data.from_items([asdict(sources[k]) for k in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(decode_videos, fn_kwargs={"num_frames": model_cfg.num_frames}, batch_size=1, num_cpus=1)
            ds = ds.map_batches(
                TokenEncoder,
                fn_constructor_kwargs={"cfg": model_cfg, "encoder": encoder, "out_dir": out_dir, **export},
                batch_size=cfg.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors or max(num_gpus, 1)),
                num_gpus=1 if gpu else 0,
                num_cpus=1 if gpu else 0.5,
            )
            for records in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows = zip(records["video_id"], records["video"], records["error"], records["shard"],
                           records["shard_bytes"], records["export_error"], strict=True)  # fmt: skip
                for video_id, video, error, shard, nbytes, export_error in rows:
                    if error:
                        ledger.fail(str(video_id), str(error), video=str(video))
                        continue
                    ledger.record({"video_id": str(video_id), "shard": str(shard)})
                    shard_bytes[str(shard)] = int(nbytes)
                    if export_error:  # the tokens are written; only the 3D export is missing
                        print(f"[precompute_tokens] warning: no reconstruction of {video_id}: {export_error}",
                              file=sys.stderr, flush=True)  # fmt: skip
                    elif cfg.export_3d:
                        exported += 1
        written = sum(shard_bytes.values())
        done = len(ledger.rows) - (len(sources) - len(todo))
        per_video = f"{written / max(done, 1) / 2**20:.2f}"
        details = {"reconstructions": exported} if cfg.export_3d else {}
        return ledger.close(shards=len(shard_bytes), bytes=written, **{"MiB per video": per_video}, **details)


def main(argv: list[str] | None = None) -> int:
    return run_job("precompute_tokens", argv, CONFIGS, precompute_tokens, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
