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
run wrote but did not list). Videos that fail go to ``errors.jsonl`` with the reason; the job goes
on and they are tried again next run. Ends with a one-line summary; exit code 0, or 1 for bad
arguments, a shard set made by another encoder, or when every video failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import ray

from jobs.common import init_ray
from vlm3r_core.precompute import (
    PrecomputeRecorder,
    TokenEncoder,
    decode_videos,
    encoder_info,
    list_videos,
    model_config,
)
from vlm3r_core.tokens import (
    TOKEN_DTYPES,
    list_token_shards,
    read_encoder_info,
    reconcile_manifest,
    token_dir,
)


@dataclass(frozen=True)
class PrecomputeConfig:
    scenes: str
    out: str
    preset: str = "tiny"
    checkpoint: str | None = None
    num_frames: int | None = None
    size: int | None = None
    with_vision_features: bool = False
    dtype: str = "float16"
    batch_size: int = 4
    num_actors: int | None = None
    address: str | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {self.num_actors}")
        if self.dtype not in TOKEN_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TOKEN_DTYPES)}, got {self.dtype!r}")


def parse_args(argv: list[str] | None = None) -> PrecomputeConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scenes", required=True, help="folder URI with <dataset>/<scene_id>/scene.json, or a .jsonl video list")
    p.add_argument("--out", required=True, help="output root URI (writes <out>/tokens/<encoder>/)")
    p.add_argument("--preset", default="tiny", help="model preset (vlm3r_core.presets): tiny, vlm3r-7b")
    p.add_argument("--checkpoint", help="CUT3R checkpoint URI (default: the preset's)")
    p.add_argument("--num-frames", type=int, help="frames sampled per video (default: the preset's, 32)")
    p.add_argument("--size", type=int, help="CUT3R input side in pixels (default: the preset's, 432 for vlm3r-7b)")
    p.add_argument("--with-vision-features", action="store_true", help="also store SigLIP features (needed to train)")
    p.add_argument("--dtype", default="float16", choices=sorted(TOKEN_DTYPES), help="storage dtype of the tokens")
    p.add_argument("--batch-size", type=int, default=4, help="videos per encoder call and per shard")
    p.add_argument("--num-actors", type=int, help="encoder actors (default: one per GPU, or 1 without GPUs)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    a = p.parse_args(argv)
    return PrecomputeConfig(
        a.scenes, a.out, a.preset, a.checkpoint, a.num_frames, a.size, a.with_vision_features, a.dtype,
        a.batch_size, a.num_actors, a.address,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        model_cfg = model_config(cfg.preset, cfg.checkpoint, cfg.size, cfg.num_frames)
        encoder = encoder_info(model_cfg, cfg.with_vision_features, cfg.dtype)
    except ValueError as e:
        print(f"[precompute_tokens] error: {e}", file=sys.stderr)
        return 1
    out_dir = token_dir(cfg.out, encoder)
    if list_token_shards(out_dir) and (found := read_encoder_info(out_dir)) != encoder:
        print(f"[precompute_tokens] error: {out_dir} holds shards of another encoder ({found.to_json()}); "
              f"this run is {encoder.to_json()}", file=sys.stderr)  # fmt: skip
        return 1
    start = time.monotonic()
    recorder = PrecomputeRecorder(out_dir, reconcile_manifest(out_dir))
    sources = list_videos(cfg.scenes)
    todo = [s for s in sources if s.video_id not in recorder.manifest]
    print(f"[precompute_tokens] {len(sources)} videos, {len(sources) - len(todo)} already done, "
          f"encoding {len(todo)} with {encoder.name} -> {out_dir}", flush=True)  # fmt: skip
    try:
        if todo:
            init_ray(cfg.address)
            num_gpus = int(ray.cluster_resources().get("GPU", 0))
            ds = ray.data.from_items([asdict(s) for s in todo], override_num_blocks=len(todo))
            ds = ds.map_batches(decode_videos, fn_kwargs={"num_frames": model_cfg.num_frames}, batch_size=1, num_cpus=1)
            ds = ds.map_batches(
                TokenEncoder,
                fn_constructor_kwargs={"cfg": model_cfg, "encoder": encoder, "out_dir": out_dir},
                batch_size=cfg.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors or max(num_gpus, 1)),
                num_gpus=1 if num_gpus else 0,
                num_cpus=1 if num_gpus else 0.5,
            )
            for records in ds.iter_batches(batch_size=None, batch_format="numpy"):
                recorder.add(records)
    finally:  # what was written stays listed even if the run stops early
        recorder.close()

    n = recorder.encoded
    per_video = f", {recorder.bytes_written / n / 2**20:.2f} MiB per video" if n else ""
    print(f"[precompute_tokens] encoded {n} videos, skipped {len(sources) - len(todo)} (done before), "
          f"failed {len(recorder.errors)}; wrote {recorder.bytes_written} bytes in {len(recorder.shard_bytes)} "
          f"shards{per_video} -> {out_dir} in {time.monotonic() - start:.1f} s", flush=True)  # fmt: skip
    if recorder.errors:
        print(f"[precompute_tokens] failures and reasons: {out_dir}/errors.jsonl", flush=True)
    return 1 if recorder.errors and not n else 0  # exit 1 only when every video failed


if __name__ == "__main__":
    sys.exit(main())
