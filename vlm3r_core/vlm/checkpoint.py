"""Persistence of VLM-3R models: the saved-folder layout, base checkpoints of SigLIP / Qwen2 /
LLaVA-Video, and the tokenizer saved beside a model.

A saved model is a folder (local path, ``file://`` or ``s3://``)::

    config.json         {"format": "vlm3r", "config": Vlm3rConfig, "stored_components", "lora"}
    model.safetensors   fusion, projector, newline, and base components without a weight reference
    adapter/            peft LoRA adapter (when the LLM carries one)
    tokenizer/          the tokenizer files

``Vlm3rForConditionalGeneration.save_pretrained`` / ``from_pretrained`` call :func:`save_model` and
:func:`load_saved_weights`; ``vlm3r_core.vlm.convert`` writes the same layout from the released
weights. This module never imports the model module (the model is passed in), so the model, the
processor and the converter all import from here without a cycle.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import safetensors.torch
import torch
from peft import PeftModel, set_peft_model_state_dict
from torch import nn

from vlm3r_core import storage
from vlm3r_core.vlm.config import BASE_COMPONENTS, TRAINABLE_PREFIXES, Vlm3rConfig
from vlm3r_core.vlm.tokenizer import load_tokenizer

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_FILE",
    "TOKENIZER_DIR",
    "WEIGHTS_FILE",
    "load_base_checkpoint",
    "load_saved_weights",
    "read_saved_config",
    "read_saved_meta",
    "save_model",
    "saved_tokenizer",
    "upload_folder",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"


# Saved folders -------------------------------------------------------------------------------------


def upload_folder(save: Callable[[str], None], uri: str) -> None:
    """Runs a ``save_pretrained``-style writer into a temporary folder and copies its files to ``uri``."""
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        for path in sorted(Path(tmp).iterdir()):
            storage.write_bytes(storage.join(uri, path.name), path.read_bytes())


def read_saved_meta(uri: str) -> dict:
    """The ``config.json`` of a saved model folder (``ValueError`` when it is not one)."""
    meta = storage.read_json(storage.join(uri, CONFIG_FILE))
    if meta.get("format") != "vlm3r":
        raise ValueError(f"{uri}: {CONFIG_FILE} is not a VLM-3R model folder (no format='vlm3r')")
    return meta


def read_saved_config(uri: str) -> Vlm3rConfig:
    """The ``Vlm3rConfig`` stored in a saved model folder."""
    return Vlm3rConfig.from_dict(read_saved_meta(uri)["config"])


def saved_tokenizer(uri: str, config: Vlm3rConfig):
    """The tokenizer saved with a model (``<uri>/tokenizer/``), else the one the config names."""
    files = storage.list_files(storage.join(uri, TOKENIZER_DIR))
    if not files:
        return load_tokenizer(config.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            Path(tmp, f.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(f))
        return load_tokenizer(tmp)


def save_model(model: nn.Module, uri: str, processor=None) -> None:
    """Writes ``model`` (a ``Vlm3rForConditionalGeneration``) under the folder ``uri`` (see the module docstring for the layout).

    ``model.safetensors`` holds the trained parts (fusion, projector, newline) and the base
    components without a weight reference (all of them for ``tiny``; the LLM after
    ``merge_and_unload``). Frozen encoders the model was built without are not stored: loading
    rebuilds them from the config (weight reference or seeded init). Every other component holds
    trained state and must be present.
    """
    model.require(("fusion", "projector", "image_newline", "language_model"), "save_pretrained")
    config = model.config
    refs = {
        "vision_tower": config.vision_weights,
        "language_model": config.llm_weights,
        "cut3r": config.cut3r_weights,
    }
    stored = [
        c
        for c in model.components
        if c in BASE_COMPONENTS and (refs[c] is None or (c == "language_model" and model.lora_merged))
    ]
    tensors = {k: v for k, v in model.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}
    for component in stored:
        tensors.update({f"{component}.{k}": v for k, v in model.component_state(component).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), safetensors.torch.save(tensors))
    has_adapter = isinstance(model.language_model, PeftModel)
    if has_adapter:
        upload_folder(model.language_model.save_pretrained, storage.join(uri, ADAPTER_DIR))
    tokenizer = processor.tokenizer if processor is not None else load_tokenizer(config.tokenizer)
    upload_folder(tokenizer.save_pretrained, storage.join(uri, TOKENIZER_DIR))
    storage.write_json(
        storage.join(uri, CONFIG_FILE),
        {"format": "vlm3r", "config": config.to_dict(), "stored_components": stored, "lora": has_adapter},
    )


def load_saved_weights(model: nn.Module, uri: str, meta: dict) -> None:
    """Loads a saved folder's weights into ``model`` (built from its config, base weights of the
    components not stored already loaded): stored components, fusion, projector, newline, LoRA."""
    components = model.components
    stored = {c for c in meta["stored_components"] if c in components}
    tensors = safetensors.torch.load(storage.read_bytes(storage.join(uri, WEIGHTS_FILE)))
    for component in [c for c in ("fusion", "projector") if c in components] + sorted(stored):
        target = (
            model.component_state(component)
            if component in BASE_COMPONENTS
            else getattr(model, component).state_dict()
        )
        given = {k[len(component) + 1 :]: v for k, v in tensors.items() if k.startswith(component + ".")}
        missing, unexpected = set(target) - set(given), set(given) - set(target)
        if missing or unexpected:
            raise ValueError(
                f"{uri}: {component} weights do not match the config "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        with torch.no_grad():
            for k, v in given.items():
                target[k].copy_(v)
    if "image_newline" in tensors and "image_newline" in components:
        with torch.no_grad():
            model.image_newline.copy_(tensors["image_newline"])
    if meta["lora"] and "language_model" in components:
        model.apply_lora()
        adapter = safetensors.torch.load(
            storage.read_bytes(storage.join(uri, ADAPTER_DIR, "adapter_model.safetensors"))
        )
        result = set_peft_model_state_dict(model.language_model, adapter)
        if result.unexpected_keys:
            raise ValueError(f"{uri}: adapter has keys the model lacks, e.g. {result.unexpected_keys[:3]}")


# Base checkpoints ----------------------------------------------------------------------------------

# (pattern, component, replacement) for the key layouts of SigLIP, Qwen2 and LLaVA-Video checkpoints:
# google/siglip-* (`vision_model.*`), transformers LlavaOnevision (old `vision_tower.vision_model.*`,
# `language_model.model.*`, `multi_modal_projector.*`; new `model.vision_tower.*`,
# `model.language_model.*`, `lm_head.*`), original LLaVA (`model.vision_tower.vision_tower.*`,
# `model.mm_projector.{0,2}.*`), plain Qwen2 (`model.*`, `lm_head.*`).
_BASE_KEY_RULES = [
    (r"^(?:model\.)?vision_tower\.(?:vision_tower\.)?(?:vision_model\.)?(.*)$", "vision_tower", r"\1"),
    (r"^vision_model\.(.*)$", "vision_tower", r"\1"),
    (r"^(?:model\.)?multi_modal_projector\.(.*)$", "projector", r"\1"),
    (r"^model\.mm_projector\.0\.(.*)$", "projector", r"linear_1.\1"),
    (r"^model\.mm_projector\.2\.(.*)$", "projector", r"linear_2.\1"),
    (r"^(?:model\.)?image_newline$", "image_newline", ""),
    (r"^(?:model\.)?language_model\.model\.(.*)$", "language_model", r"model.\1"),
    (r"^(?:model\.)?language_model\.lm_head\.(.*)$", "language_model", r"lm_head.\1"),
    (r"^model\.language_model\.(.*)$", "language_model", r"model.\1"),
    (r"^lm_head\.(.*)$", "language_model", r"lm_head.\1"),
    (r"^model\.((?:embed_tokens|layers|norm|rotary_emb)\..*)$", "language_model", r"model.\1"),
]


def map_base_key(key: str, vision_layers: int) -> tuple[str, str] | None:
    """Maps a base checkpoint key to ``(component, key)``; None for tensors we do not use."""
    for pattern, component, replacement in _BASE_KEY_RULES:
        m = re.match(pattern, key)
        if m:
            mapped = m.expand(replacement)
            if component == "vision_tower":
                layer = re.match(r"encoder\.layers\.(\d+)\.", mapped)
                if mapped.startswith("head.") or (layer and int(layer.group(1)) >= vision_layers):
                    return None  # pooling head and the last block: unused (penultimate features)
            return component, mapped
    return None


def load_base_checkpoint(
    ref: str, targets: dict[str, dict[str, torch.Tensor]], vision_layers: int
) -> set[str]:
    """Copies the tensors of the components in ``targets`` found in a safetensors checkpoint.

    Args:
        ref: a ``.safetensors`` file or folder (local or URI) or a hub id.
        targets: component -> its tensors under checkpoint names (``component_state``), written in place.
        vision_layers: SigLIP blocks kept (the last block is not used: penultimate features).

    Returns:
        The components found in the checkpoint; each of them complete (else ``ValueError``).
    """
    seen: dict[str, set[str]] = {c: set() for c in targets}
    for shard in _checkpoint_shards(ref):
        for name, tensor in shard.items():
            mapped = map_base_key(name, vision_layers)
            if mapped is None or mapped[0] not in targets or mapped[1] not in targets[mapped[0]]:
                continue
            component, key = mapped
            target = targets[component][key]
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"{ref}: {component}.{key} has shape {tuple(tensor.shape)}, the config expects "
                    f"{tuple(target.shape)} (check the preset's vision/text sizes, e.g. vocab_size)"
                )
            with torch.no_grad():
                target.copy_(tensor)
            seen[component].add(key)
    found = {c for c in targets if seen[c]}
    for c in found:
        missing = set(targets[c]) - seen[c]
        if missing:
            raise ValueError(f"{ref}: {c} is missing {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    return found


def _checkpoint_shards(ref: str) -> Iterator[dict[str, torch.Tensor]]:
    """Yields the safetensors shards of a checkpoint: a file or folder (local or URI) or a hub id."""
    if storage.exists(ref):
        files = [ref] if ref.endswith(".safetensors") else storage.list_files(ref, ".safetensors")
        if not files:
            raise ValueError(f"{ref}: no .safetensors files")
        for f in files:
            if storage.is_remote(f):
                yield safetensors.torch.load(storage.read_bytes(f))
            else:
                yield safetensors.torch.load_file(storage.filesystem(f)[1])
        return
    if os.path.isabs(ref) or ref.startswith((".", "~")) or "://" in ref:
        raise FileNotFoundError(f"base weights {ref!r} not found")
    from huggingface_hub import snapshot_download

    folder = snapshot_download(ref, allow_patterns=["*.safetensors", "*.json"])
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"hub checkpoint {ref!r} has no .safetensors files")
    for f in files:
        yield safetensors.torch.load_file(str(f))
