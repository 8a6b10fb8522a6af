"""Model cards: the ``README.md`` of every trained or converted model folder (Hugging Face conventions).

A model folder (``save_pretrained`` layout, :mod:`vlm3r_core.vlm.checkpoint`) gets, beside its
``config.json``:

- ``provenance.json``: how it was made. ``jobs/train.py`` writes ``{"kind": "trained", ...}`` with
  the run's settings, its data (conversations and token shards: URIs, counts, the token shards'
  encoder and manifest), steps, batch, hardware and wall time (:func:`training_provenance`);
  ``vlm3r_core.vlm.convert`` writes ``{"kind": "converted", ...}`` with the release folder and the
  prompt form it chose.
- ``evaluations.json``: one entry per ``jobs/evaluate.py`` output folder that evaluated this model
  (overall and per-task scores, chance levels, the run's settings; a re-run replaces its entry).
- ``README.md``: the card rendered from the three (:func:`write_model_card`): YAML front matter
  (``base_model``, ``tags``, ``pipeline_tag``, ``model-index`` with every evaluation result), the
  model (sizes, base weights, dtype, frames, the prompt form with an example), training or
  conversion, evaluation tables, and how to use it.

Every writer here rewrites the card, so the card always shows what the folder holds.
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Sequence
from dataclasses import asdict

import yaml

from vlm3r_core import storage
from vlm3r_core.prompting import PROMPT_FORMS, PromptConfig, build_user_message
from vlm3r_core.vlm.checkpoint import CONFIG_FILE, read_saved_meta
from vlm3r_core.vlm.config import Vlm3rConfig

__all__ = [
    "CARD_FILE",
    "EVALUATIONS_FILE",
    "PROVENANCE_FILE",
    "is_model_folder",
    "record_evaluation",
    "render_model_card",
    "training_provenance",
    "write_model_card",
    "write_provenance",
]

CARD_FILE = "README.md"
PROVENANCE_FILE = "provenance.json"
EVALUATIONS_FILE = "evaluations.json"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def is_model_folder(uri: str) -> bool:
    """True for a folder (local or URI) holding a saved model's ``config.json``."""
    if uri.startswith("openai:"):
        return False
    try:
        read_saved_meta(uri)
    except (OSError, ValueError):
        return False
    return True


def _read_optional(uri: str, default):
    return storage.read_json(uri) if storage.exists(uri) else default


def write_provenance(model_uri: str, provenance: dict) -> None:
    """Writes ``provenance.json`` and the card."""
    storage.write_json(storage.join(model_uri, PROVENANCE_FILE), provenance)
    write_model_card(model_uri)


def training_provenance(
    train_config: dict, *, model, steps: int | None, loss: float | None, hardware: str, wall_time_s: float
) -> dict:
    """The ``provenance.json`` of a model ``jobs/train.py`` exported.

    Args:
        train_config: the run's ``TrainConfig`` as a dict (``dataclasses.asdict``).
        model: the ``Vlm3rConfig`` it trained (the join of conversations and tokens depends on it).
        steps: optimiser steps done; loss: the last reported training loss.
        hardware: what trained it, e.g. ``8 x GPU (H100)``.
        wall_time_s: wall time of the training job that finished the run.
    """
    from vlm3r_core.tokens import read_encoder_info, read_token_table
    from vlm3r_core.train_data import plan_training_join

    qa, tokens = train_config["qa_uri"], train_config["tokens_uri"]
    manifest = storage.join(tokens, "manifest.jsonl")
    plan = plan_training_join(qa, tokens, model)
    workers, micro, accum = (train_config[k] for k in ("num_workers", "micro_batch_size", "grad_accum_steps"))
    return {
        "kind": "trained",
        "created": now(),
        "steps": steps,
        "final_loss": loss,
        "global_batch": workers * micro * accum,
        "hardware": hardware,
        "wall_time_s": round(wall_time_s, 1),
        "data": {
            "conversations": {"uri": qa, "used": len(plan.examples), "skipped": len(plan.skipped)},
            "tokens": {
                "uri": tokens,
                "videos": read_token_table(tokens, columns=["video_id"]).num_rows,
                "manifest": manifest if storage.exists(manifest) else None,
                "encoder": asdict(read_encoder_info(tokens)),
            },
        },
        "train_config": train_config,
    }


def record_evaluation(model_uri: str, eval_out: str) -> bool:
    """Adds the results an evaluation wrote under ``eval_out`` (its ``summary.json``) to the model
    folder's ``evaluations.json`` and rewrites the card. False when ``model_uri`` is no model folder
    (a preset name, an endpoint)."""
    if not is_model_folder(model_uri):
        return False
    summary = storage.read_json(storage.join(eval_out, "summary.json"))
    entry = {
        "out": eval_out,
        "recorded": now(),
        "title": summary.get("title", ""),
        "num_questions": summary.get("num_questions"),
        "run": summary.get("run", {}),
        "benchmarks": summary.get("benchmarks", {}),
        "chance_levels": summary.get("chance_levels", {}),
    }
    uri = storage.join(model_uri, EVALUATIONS_FILE)
    entries = [e for e in _read_optional(uri, []) if e.get("out") != eval_out] + [entry]
    storage.write_json(uri, entries)
    write_model_card(model_uri)
    return True


def write_model_card(model_uri: str) -> str:
    """Renders ``README.md`` from the folder's config, provenance and evaluations; returns it."""
    meta = read_saved_meta(model_uri)
    provenance = _read_optional(storage.join(model_uri, PROVENANCE_FILE), {})
    evaluations = _read_optional(storage.join(model_uri, EVALUATIONS_FILE), [])
    name = posixpath.basename(model_uri.rstrip("/")) or "vlm3r-model"
    card = render_model_card(name, meta, provenance, evaluations)
    storage.write_text(storage.join(model_uri, CARD_FILE), card)
    return card


# Rendering ------------------------------------------------------------------------------------------

_BENCHMARK_NAMES = {"vsibench": "VSI-Bench", "vstibench": "VSTI-Bench"}


def _benchmark_name(key: str) -> str:
    base, _, rest = key.partition("-")
    return _BENCHMARK_NAMES.get(base, base) + (f"-{rest.capitalize()}" if rest else "")


def _hub_id(ref: str | None) -> str | None:
    """``owner/name`` when ``ref`` looks like a hub id (not a path or URI)."""
    if not ref or "://" in ref or ref.startswith(("/", ".", "~")) or ref.count("/") != 1:
        return None
    return ref


def _front_matter(name: str, config: Vlm3rConfig, lora: bool, evaluations: Sequence[dict]) -> str:
    base = sorted({h for h in (_hub_id(config.llm_weights), _hub_id(config.vision_weights)) if h})
    data: dict = {}
    if base:
        data["base_model"] = base if len(base) > 1 else base[0]
    if lora:
        data["library_name"] = "peft"
    data["pipeline_tag"] = "video-text-to-text"
    data["tags"] = ["vlm3r", "spatial-reasoning", "video-question-answering", "cut3r", "3d"] + (["lora"] if lora else [])
    results = []
    for e in evaluations:
        run = e.get("run", {})
        for key, b in e.get("benchmarks", {}).items():
            results.append({
                "task": {"type": "video-question-answering", "name": "Spatial video question answering"},
                "dataset": {"name": f"{_benchmark_name(key)} ({e.get('title') or run.get('benchmark', '')})",
                            "type": run.get("benchmark") or key, **({"split": run["split"]} if run.get("split") else {})},
                "metrics": [
                    {"type": "accuracy", "name": "overall (official)", "value": round(b["overall"]["official"], 2)},
                    {"type": "accuracy", "name": "overall (lenient)", "value": round(b["overall"]["lenient"], 2)},
                ],
            })  # fmt: skip
    if results:
        data["model-index"] = [{"name": name, "results": results}]
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _prompt_section(prompt: PromptConfig) -> list[str]:
    form = prompt.form
    example = build_user_message(
        "How many chair(s) are in this room?", timestamps=[0.0, 2.0, 4.0], duration_s=6.0, config=prompt
    ) if prompt.add_time_instruction else build_user_message("How many chair(s) are in this room?", config=prompt)
    described = {
        "official-eval": "the official VLM-3R evaluation's prompt (no time line)",
        "official-train": "the official VLM-3R training prompt (time line without a space before `Please`, "
        "then a blank line)",
        "ours": "this system's prompt (time line, then the question on the next line)",
    }.get(form, "a custom prompt")
    return [
        f"Prompt form: `{form}`, {described}. The user turn for a numeric question over 3 frames:",
        "",
        "```",
        example,
        "```",
        "",
        f"Other forms: {', '.join(f'`{f}`' for f in PROMPT_FORMS if f != form)} (`vlm3r_core.prompting.prompt_form`).",
    ]


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def _evaluation_section(evaluations: Sequence[dict]) -> list[str]:
    if not evaluations:
        return ["No evaluation yet: `python jobs/evaluate.py --model <this folder> ...` adds its results here."]
    lines = []
    for e in evaluations:
        run = e.get("run", {})
        lines += [
            f"### {e.get('title') or run.get('answerer', '')}",
            "",
            f"Benchmark `{run.get('benchmark', '?')}`, {e.get('num_questions')} questions, "
            f"dtype {run.get('dtype') or 'of the config'}{', blind (no video)' if run.get('blind') else ''}; "
            f"results in `{e['out']}` ({e.get('recorded', '')}).",
            "",
        ]
        for key, b in e.get("benchmarks", {}).items():
            levels = e.get("chance_levels", {}).get(key, {})
            chance, freq = levels.get("chance", {}), levels.get("frequency", {})
            lines += [f"**{_benchmark_name(key)}**", "",
                      "| task | n | official | lenient | chance | frequency |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
            for t, v in b["tasks"].items():
                lines.append(f"| {t} | {v['count']} | {_fmt(v['official'])} | {_fmt(v['lenient'])} | "
                             f"{_fmt(chance.get('tasks', {}).get(t))} | {_fmt(freq.get('tasks', {}).get(t))} |")  # fmt: skip
            lines += [f"| **overall** | | **{_fmt(b['overall']['official'])}** | **{_fmt(b['overall']['lenient'])}** | "
                      f"{_fmt(chance.get('overall'))} | {_fmt(freq.get('overall'))} |", ""]  # fmt: skip
    lines += ["Official = the lmms-eval VSI-Bench/VSTI-Bench rules; chance = a random guess, frequency = always the "
              "most frequent answer (VSI-Bench's chance-level rows); see `vlm3r_core/metrics.py`."]  # fmt: skip
    return lines


def _origin_section(provenance: dict) -> list[str]:
    kind = provenance.get("kind")
    if kind == "converted":
        return [
            "## Conversion",
            "",
            f"Converted on {provenance.get('created', '?')} from the released VLM-3R weights in "
            f"`{provenance.get('source', '?')}` (peft LoRA adapter + `non_lora_trainables.bin`) with "
            "`python -m vlm3r_core.vlm.convert`; the base weights stay references (above).",
        ]
    if kind == "trained":
        cfg, data = provenance.get("train_config", {}), provenance.get("data", {})
        conv, tokens = data.get("conversations", {}), data.get("tokens", {})
        enc = tokens.get("encoder", {})
        rows = [
            ("conversations", f"`{conv.get('uri')}`: {conv.get('used')} used, {conv.get('skipped')} without tokens"),
            ("token shards", f"`{tokens.get('uri')}`: {tokens.get('videos')} videos"
                             + (f" (manifest `{tokens['manifest']}`)" if tokens.get("manifest") else "")
                             + f", encoder {enc.get('preset')} {enc.get('image_size')} px, "
                             f"{enc.get('num_frames')} frames, {enc.get('dtype')}"),
            ("steps", f"{provenance.get('steps')} of {cfg.get('max_steps')}"),
            ("batch", f"{provenance.get('global_batch')} = {cfg.get('num_workers')} workers x "
                      f"{cfg.get('micro_batch_size')} x {cfg.get('grad_accum_steps')} accumulation"),
            ("optimiser", f"AdamW lr {cfg.get('lr')}, warmup {cfg.get('warmup_ratio')}, cosine, weight decay "
                          f"{cfg.get('weight_decay')}, clip {cfg.get('max_grad_norm')}, seed {cfg.get('seed')}"),
            ("DeepSpeed", f"ZeRO-{cfg.get('zero_stage')}"),
            ("hardware", provenance.get("hardware")),
            ("wall time", f"{provenance.get('wall_time_s')} s"),
            ("final loss", "-" if provenance.get("final_loss") is None else f"{provenance['final_loss']:.4f}"),
        ]  # fmt: skip
        return ["## Training", "", f"Trained with `jobs/train.py` (finished {provenance.get('created', '?')}).", "",
                "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]  # fmt: skip
    return ["## Origin", "", "Saved with `save_pretrained`; no training or conversion record in this folder."]


def render_model_card(name: str, meta: dict, provenance: dict, evaluations: Sequence[dict]) -> str:
    """The card's markdown (see the module docstring)."""
    config = Vlm3rConfig.from_dict(meta["config"])
    lora = bool(meta.get("lora"))
    text = config.text
    model_rows = [
        ("preset", config.name),
        ("LLM", f"Qwen2, {text['num_hidden_layers']} layers x {text['hidden_size']}, vocabulary {text['vocab_size']}; "
                f"weights `{config.llm_weights or 'seeded random init'}`"),
        ("vision tower", f"SigLIP {config.vision['num_hidden_layers'] - 1} of {config.vision['num_hidden_layers']} "
                         f"blocks at {config.siglip_image_size} px; weights `{config.vision_weights or 'seeded random init'}`"),
        ("3D encoder", f"CUT3R at {config.cut3r_image_size} px, width {config.spatial_dim}; "
                       f"weights `{config.cut3r_weights or 'seeded random init'}`"),
        ("fusion", f"{config.fusion_variant}, {config.fusion_num_heads} heads"),
        ("LoRA", f"r {config.lora_r}, alpha {config.lora_alpha}, dropout {config.lora_dropout}" if lora else "none"),
        ("frames per video", config.num_frames),
        ("video tokens per frame", config.tokens_per_frame),
        ("dtype", config.dtype),
        ("tokenizer", f"`{config.tokenizer or 'tiny (shipped)'}`"),
    ]  # fmt: skip
    lines = [
        _front_matter(name, config, lora, evaluations),
        f"# {name}",
        "",
        "A VLM-3R model (SigLIP + CUT3R tokens fused into LLaVA-Video / Qwen2) that answers spatial and "
        "spatio-temporal questions about a monocular video. Files: `config.json` (the whole configuration, "
        "prompt included), `model.safetensors` (fusion, projector, newline"
        + (", base weights without a reference" if meta.get("stored_components") else "")
        + ")" + (", `adapter/` (peft LoRA)" if lora else "") + ", `tokenizer/`.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in model_rows],
        "",
        *_prompt_section(config.prompt),
        "",
        *_origin_section(provenance),
        "",
        "## Evaluation",
        "",
        *_evaluation_section(evaluations),
        "",
        "## Use",
        "",
        "```",
        "python jobs/evaluate.py --model <this folder> --benchmark <rows.parquet> --out <results>",
        "serve run serve_apps.app:build_app model=<this folder>",
        "```",
        "",
        f"Generated by `vlm3r_core/model_card.py` from `{CONFIG_FILE}`, `{PROVENANCE_FILE}` and `{EVALUATIONS_FILE}`.",
        "",
    ]
    return "\n".join(lines)
