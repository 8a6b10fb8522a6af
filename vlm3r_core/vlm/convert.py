"""Converts the released VLM-3R weights into our saved-model layout.

The release (``Journey9ni/vlm-3r-llava-qwen2-lora`` and ``...-vstibench``) is a LLaVA training
output: a peft LoRA adapter over LLaVA-Video's Qwen2 (``adapter_config.json``,
``adapter_model.safetensors`` or ``.bin``) plus ``non_lora_trainables.bin`` holding the projector
and the fusion block under LLaVA's parameter names::

    base_model.model.model.mm_projector.{0,2}.{weight,bias}     -> projector.linear_{1,2}.*
    base_model.model.model.fusion_block.<name>                  -> fusion.<name>   (reference variant)
    base_model.model.model.image_newline (if present)           -> image_newline

The LoRA keys (``base_model.model.model.layers.N.{self_attn,mlp}.X_proj.lora_{A,B}.weight``)
already match our peft-wrapped Qwen2 and are copied unchanged. The base weights (SigLIP, Qwen2,
newline, CUT3R) stay references in the config (``--preset`` plus ``--llm-weights`` etc.).

    python -m vlm3r_core.vlm.convert --lora DIR_OR_URI --out URI [--preset vlm3r-7b] \\
        [--llm-weights REF] [--vision-weights REF] [--cut3r-weights REF] [--tokenizer REF]

``.bin`` files are read with ``torch.load(weights_only=True)`` (no code runs).
"""

from __future__ import annotations

import argparse
import io
import re
import sys

import safetensors.torch
import torch

from vlm3r_core import storage
from vlm3r_core.model_card import now, write_provenance
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import PROMPT_FORMS, prompt_form
from vlm3r_core.vlm.checkpoint import ADAPTER_DIR, CONFIG_FILE, WEIGHTS_FILE, upload_folder
from vlm3r_core.vlm.config import Vlm3rConfig
from vlm3r_core.vlm.model import Vlm3rForConditionalGeneration

__all__ = ["convert_release", "main"]

_LORA_KEY = re.compile(
    r"^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.lora_[AB]\.weight$"
)
_NON_LORA_RULES = [
    (
        re.compile(r"^(?:base_model\.model\.)?model\.mm_projector\.0\.(weight|bias)$"),
        r"projector.linear_1.\1",
    ),
    (
        re.compile(r"^(?:base_model\.model\.)?model\.mm_projector\.2\.(weight|bias)$"),
        r"projector.linear_2.\1",
    ),
    (re.compile(r"^(?:base_model\.model\.)?model\.fusion_block\.(.+)$"), r"fusion.\1"),
    (re.compile(r"^(?:base_model\.model\.)?model\.image_newline$"), "image_newline"),
]


def _load_tensors(uri: str) -> dict[str, torch.Tensor]:
    data = storage.read_bytes(uri)
    if uri.endswith(".safetensors"):
        return safetensors.torch.load(data)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{uri}: expected a flat dict of tensors")
    return state


def _first_existing(folder: str, names: tuple[str, ...]) -> str:
    for name in names:
        uri = storage.join(folder, name)
        if storage.exists(uri):
            return uri
    raise FileNotFoundError(f"{folder}: none of {names}")


DEFAULT_PROMPT_FORM = "official-eval"


def convert_release(
    lora_dir: str, out: str, config: Vlm3rConfig, prompt: str = DEFAULT_PROMPT_FORM
) -> Vlm3rConfig:
    """Writes the released LoRA + non-LoRA weights under ``out`` in ``save_pretrained`` layout.

    Args:
        lora_dir: folder (local or URI) of the release: ``adapter_config.json``, the adapter
            weights and ``non_lora_trainables.bin``.
        out: output folder URI.
        config: the model config (``vlm3r-7b`` with base weight references); its LoRA settings
            are replaced by the adapter's.
        prompt: the prompt form stored with the model (``vlm3r_core.prompting.PROMPT_FORMS``):
            ``official-eval`` reproduces the official evaluation.

    Returns:
        The config written to ``out/config.json``.

    Raises:
        ValueError: a key the model has no place for, a shape that does not match the config, or
            an adapter feature we do not support (DoRA, rsLoRA, bias).
    """
    adapter_config = storage.read_json(storage.join(lora_dir, "adapter_config.json"))
    for flag in ("use_dora", "use_rslora"):
        if adapter_config.get(flag):
            raise ValueError(f"{lora_dir}: adapters with {flag} are not supported")
    if adapter_config.get("bias", "none") != "none":
        raise ValueError(f"{lora_dir}: adapters that train biases are not supported")
    config = config.replace(
        prompt=prompt_form(prompt),
        fusion_variant="reference",
        lora_r=int(adapter_config["r"]),
        lora_alpha=int(adapter_config["lora_alpha"]),
        lora_dropout=float(adapter_config.get("lora_dropout", 0.0)),
    )

    lora = {}
    for key, tensor in _load_tensors(
        _first_existing(lora_dir, ("adapter_model.safetensors", "adapter_model.bin"))
    ).items():
        key = key.replace(".default.", ".")
        if not _LORA_KEY.match(key):
            raise ValueError(f"{lora_dir}: LoRA key {key!r} is not on a linear layer of the Qwen2 LLM")
        lora[key] = tensor

    trainables = {}
    for key, tensor in _load_tensors(storage.join(lora_dir, "non_lora_trainables.bin")).items():
        for pattern, replacement in _NON_LORA_RULES:
            if pattern.match(key):
                trainables[pattern.sub(replacement, key)] = tensor
                break
        else:
            raise ValueError(
                f"{lora_dir}/non_lora_trainables.bin: no place for {key!r} (expected projector, fusion, newline)"
            )

    # Check names and shapes against the model the config describes (built on "meta": no memory).
    model = Vlm3rForConditionalGeneration.from_config(config, device="meta")
    model.apply_lora()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    peft_keys = {
        k.replace(".default.", ".").replace("language_model.", "", 1): v
        for k, v in expected.items()
        if "lora_" in k
    }
    for name, group, allowed in (("LoRA", lora, peft_keys), ("non-LoRA", trainables, expected)):
        for key, tensor in group.items():
            if key not in allowed:
                raise ValueError(
                    f"{lora_dir}: {name} tensor {key!r} has no counterpart in the {config.name} model"
                )
            if tuple(tensor.shape) != allowed[key]:
                raise ValueError(
                    f"{lora_dir}: {key} has shape {tuple(tensor.shape)}, the {config.name} model expects {allowed[key]}"
                )
    for prefix in ("fusion.", "projector."):
        missing = {k for k in expected if k.startswith(prefix)} - set(trainables)
        if missing:
            raise ValueError(f"{lora_dir}: non_lora_trainables.bin lacks {sorted(missing)[:3]}")

    dtype = config.torch_dtype
    storage.write_bytes(
        storage.join(out, WEIGHTS_FILE),
        safetensors.torch.save({k: v.to(dtype).contiguous() for k, v in trainables.items()}),
    )
    storage.write_bytes(
        storage.join(out, ADAPTER_DIR, "adapter_model.safetensors"),
        safetensors.torch.save({k: v.contiguous() for k, v in lora.items()}),
    )
    peft_config = model.language_model.peft_config["default"]
    upload_folder(peft_config.save_pretrained, storage.join(out, ADAPTER_DIR))
    storage.write_json(
        storage.join(out, CONFIG_FILE),
        {"format": "vlm3r", "config": config.to_dict(), "stored_components": [], "lora": True},
    )
    write_provenance(out, {"kind": "converted", "created": now(), "source": lora_dir, "prompt_form": prompt})
    return config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lora", required=True, help="folder of the released adapter + non_lora_trainables.bin"
    )
    parser.add_argument("--out", required=True, help="output folder (local path or URI)")
    parser.add_argument("--preset", default="vlm3r-7b")
    for ref in ("llm_weights", "vision_weights", "cut3r_weights", "tokenizer"):
        parser.add_argument(
            "--" + ref.replace("_", "-"), dest=ref, default=None, help=f"override the preset's {ref}"
        )
    parser.add_argument(
        "--prompt-form", default=DEFAULT_PROMPT_FORM, choices=sorted(PROMPT_FORMS),
        help="prompt stored with the model: official-eval (the official evaluation, default), "
        "official-train (the official training's time line), ours",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {
        k: getattr(args, k)
        for k in ("llm_weights", "vision_weights", "cut3r_weights", "tokenizer")
        if getattr(args, k)
    }
    config = convert_release(args.lora, args.out, get_preset(args.preset, **overrides), args.prompt_form)
    print(
        f"converted {args.lora} -> {args.out} (preset {config.name}, LoRA r={config.lora_r} alpha={config.lora_alpha}, "
        f"prompt {args.prompt_form}; model card {args.out}/README.md)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
