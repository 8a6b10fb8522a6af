"""VLM-3R: SigLIP + CUT3R tokens, cross-attention fusion, MLP projector, LLaVA-Video token layout, Qwen2.

Full definition of the model in this file. Legend: ``B`` videos, ``T`` frames (padded; ``frame_mask``
marks real ones), ``P`` SigLIP tokens per frame (729 = 27x27), ``g`` SigLIP grid side (27), ``h``
pooled side ceil(g / 2) (14), ``N`` CUT3R patch tokens per frame (729), ``Cv`` SigLIP width (1152),
``Cs`` CUT3R width (768), ``D`` LLM width (3584), ``L`` sequence length, ``V`` vocabulary.

Per frame (``embed_video``):

    H_v  = SigLIP penultimate layer                                  (P, Cv)
    Z_3D = [camera token ; CUT3R patch tokens]                       (1 + N, Cs)
    H'_v = SpatialFusion(H_v, Z_3D) = H_v + CrossAttn(H_v -> Z_3D)   (P, Cv)
    E    = projector(H'_v): Linear, GELU, Linear                     (P, D)
    E    = bilinear pool of the g x g grid to h x h                  (h, h, D)
    E    = a learned newline token after each of the h rows          (h * (h + 1), D) = 210 tokens

exactly as LLaVA-Video lays out video tokens (pooling after the projector, on LLM-width features;
this differs from transformers' LlavaOnevision video path). A video's T_b frames become
T_b * 210 tokens that replace the single ``<image>`` placeholder of its prompt (``_merge``).

The encoders and the LLM base are frozen; the fusion block, the projector and the newline token
train fully, the LLM through LoRA (``apply_lora``). Inputs are either pixels (``FramePixels``, the
model runs both encoders) or precomputed ``VideoFeatures`` (token shards); both give the same result.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from vlm3r_core import prompting
from vlm3r_core.fusion import SpatialFusion
from vlm3r_core.geometry import Cut3r
from vlm3r_core.geometry.checkpoint import load_cut3r
from vlm3r_core.vlm import checkpoint
from vlm3r_core.vlm.config import BASE_COMPONENTS, COMPONENTS, Vlm3rConfig
from vlm3r_core.vlm.processor import IGNORE_INDEX, FramePixels

__all__ = [
    "COMPONENTS",
    "VideoFeatures",
    "Vlm3rOutput",
    "Vlm3rForConditionalGeneration",
    "Vlm3rProjector",
    "siglip_features",
    "mask_unproducible_logits",
]


@dataclass
class VideoFeatures:
    """Frozen-encoder outputs for a batch of videos: what the token shards store.

    Attributes:
        vision_features: (B, T, P, Cv) SigLIP penultimate-layer tokens; None when only CUT3R ran
            (token shards without SigLIP features).
        camera_tokens: (B, T, 1, Cs) CUT3R camera token z'_t.
        patch_tokens: (B, T, N, Cs) CUT3R patch tokens F'_t.
        frame_mask: (B, T) bool, True for real frames; padding frames hold zeros.
        poses: (B, T, 7) CUT3R camera poses (translation, quaternion) when its pose head ran.
    """

    vision_features: torch.Tensor | None
    camera_tokens: torch.Tensor
    patch_tokens: torch.Tensor
    frame_mask: torch.Tensor
    poses: torch.Tensor | None = None

    def to(self, device=None, dtype=None) -> VideoFeatures:
        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device, dtype)

        return VideoFeatures(
            move(self.vision_features),
            self.camera_tokens.to(device, dtype),
            self.patch_tokens.to(device, dtype),
            self.frame_mask.to(device),
            move(self.poses),
        )

    def video(self, b: int) -> VideoFeatures:
        """Video ``b`` alone, (1, T, ...), as copies (a view would keep the whole batch alive)."""

        def take(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[b : b + 1].clone()

        return VideoFeatures(
            take(self.vision_features), take(self.camera_tokens), take(self.patch_tokens), take(self.frame_mask),
            take(self.poses),
        )  # fmt: skip

    @classmethod
    def from_videos(
        cls,
        vision_features: Sequence[np.ndarray | torch.Tensor],
        camera_tokens: Sequence[np.ndarray | torch.Tensor],
        patch_tokens: Sequence[np.ndarray | torch.Tensor],
        dtype: torch.dtype = torch.float32,
    ) -> VideoFeatures:
        """Pads per-video arrays ((T_b, P, Cv), (T_b, 1, Cs), (T_b, N, Cs)) into one batch.

        Arrays may be numpy (token shards) or tensors of any dtype and device (bf16 included);
        the batch is in ``dtype`` on the device of the first video.
        """
        if not (len(vision_features) == len(camera_tokens) == len(patch_tokens)) or not vision_features:
            raise ValueError("from_videos needs the same number (>= 1) of vision, camera and patch arrays")
        parts = [[_as_tensor(x, dtype) for x in arrays] for arrays in (vision_features, camera_tokens, patch_tokens)]
        lengths = [v.shape[0] for v in parts[0]]
        for b, (v, c, p) in enumerate(zip(*parts, strict=True)):
            if not (v.shape[0] == c.shape[0] == p.shape[0]) or c.shape[1] != 1:
                raise ValueError(
                    f"video {b}: frame counts differ or camera tokens are not (T, 1, C): "
                    f"vision {tuple(v.shape)}, camera {tuple(c.shape)}, patch {tuple(p.shape)}"
                )
        t_max = max(lengths)

        def pad(arrays: list[torch.Tensor]) -> torch.Tensor:
            out = arrays[0].new_zeros((len(arrays), t_max, *arrays[0].shape[1:]))  # (B, T, ...)
            for b, x in enumerate(arrays):
                out[b, : x.shape[0]] = x.to(out.device)
            return out

        mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)
        return cls(pad(parts[0]), pad(parts[1]), pad(parts[2]), mask.to(parts[0][0].device))


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array or tensor as a tensor of ``dtype`` (no numpy round trip for tensors: numpy has
    no bfloat16; read-only arrays from Arrow are copied once, in the conversion)."""
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x), dtype=dtype)


@dataclass
class Vlm3rOutput:
    """Output of ``Vlm3rForConditionalGeneration.forward``.

    Attributes:
        loss: mean cross-entropy over the supervised (answer) tokens, when labels were given.
        logits: (B, L, V) next-token logits over the merged sequence when no labels were given;
            None with labels (only the supervised positions go through the LM head, which saves
            the (B, ~7k, 152k) logits tensor in training).
        label_logits: (n, V) with labels: the logits that predict the n supervised tokens, row by
            row and in order within a row (what the loss is computed from; per-token log-probs for
            reinforcement tuning, ``vlm3r_core.rl``). None without labels.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None
    label_logits: torch.Tensor | None = None


class Vlm3rProjector(nn.Module):
    """LLaVA's ``mlp2x_gelu``: Linear(Cv, D), GELU, Linear(D, D)."""

    def __init__(self, vision_dim: int, text_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class FramewiseActivation(nn.Module):
    """Applies an elementwise activation one frame at a time on the CPU, so that a frame's SigLIP
    features do not depend on the other frames of its batch.

    PyTorch's vectorised CPU kernels compute the last ``numel % (2 * vector width)`` elements of a
    call with the scalar ``tanh``, which rounds differently from the vector one. With SigLIP-so400m
    (729 x 4304 activations per frame) one frame alone and the same frame inside a 32-frame batch
    therefore differed in a few activations, and after 26 blocks in many features. One call per
    frame gives every frame the same element layout whatever the batch (live sessions encode one
    frame at a time, offline requests all sampled frames at once). CUDA kernels apply the same
    function to every element, so there the activation runs once on the whole batch.
    """

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, P, C), n frames -> (n, P, C)."""
        if x.device.type != "cpu" or x.shape[0] == 1:
            return self.activation(x)
        return torch.cat([self.activation(x[i : i + 1]) for i in range(x.shape[0])])


def siglip_features(vision_tower: SiglipVisionModel, pixels: torch.Tensor) -> torch.Tensor:
    """SigLIP penultimate-layer features of single frames: the one vision path of encoding
    (``encode_frames``, token precompute, live sessions).

    Args:
        vision_tower: the model's ``vision_tower`` (all SigLIP blocks but the last).
        pixels: (n, 3, S, S) frames in [-1, 1], in the tower's dtype and on its device.

    Returns:
        (n, P, Cv); each frame's features are the same whether it is encoded alone or with others
        (on the CPU bit for bit, see ``FramewiseActivation``).
    """
    hidden = vision_tower.embeddings(pixels)  # (n, P, Cv)
    return vision_tower.encoder(inputs_embeds=hidden).last_hidden_state  # (n, P, Cv), penultimate
def mask_unproducible_logits(
    logits: torch.Tensor, vocab_size: int | None, suppress_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Sets to -inf the logits of ids generation must never pick: the embedding rows past the
    tokenizer (``vocab_size``; Qwen2 pads its 151,646 tokens to 152,064 rows, the official loader
    resizes them away) and input-only tokens (the video placeholder).

    Args:
        logits: (..., V) next-token logits.
        vocab_size: number of ids the tokenizer has (``len(tokenizer)``); None keeps all V rows.
        suppress_ids: further ids never generated.

    Returns:
        (..., V) logits, a new tensor; the allowed ids keep their values bit for bit.
    """
    mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)  # (V,)
    if vocab_size is not None:
        mask[vocab_size:] = True
    ids = [i for i in suppress_ids if 0 <= i < logits.shape[-1]]
    if ids:
        mask[torch.tensor(ids, device=logits.device)] = True
    return logits.masked_fill(mask, float("-inf"))


class _MaskUnproducible(LogitsProcessor):
    """``generate``'s hook for :func:`mask_unproducible_logits`."""

    def __init__(self, vocab_size: int | None, suppress_ids: Sequence[int]):
        self.vocab_size, self.suppress_ids = vocab_size, tuple(suppress_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return mask_unproducible_logits(scores, self.vocab_size, self.suppress_ids)  # (B, V)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _build_component(config: Vlm3rConfig, name: str) -> nn.Module | nn.Parameter:
    """One part of the model (a name in ``COMPONENTS``), randomly initialised."""
    if name == "vision_tower":
        vision = dict(
            config.vision, num_hidden_layers=config.vision["num_hidden_layers"] - 1, vision_use_head=False
        )
        tower = SiglipVisionModel(SiglipVisionConfig(**vision))
        tower.post_layernorm = nn.Identity()  # features are taken before it (penultimate layer)
        for layer in tower.encoder.layers:  # no weights: checkpoint keys are unchanged
            layer.mlp.activation_fn = FramewiseActivation(layer.mlp.activation_fn)
        return tower
    if name == "cut3r":
        return Cut3r.from_config(config.cut3r)
    if name == "fusion":
        return SpatialFusion(
            config.vision_dim,
            config.spatial_dim,
            config.fusion_num_heads,
            config.fusion_variant,
            config.fusion_dropout,
        )
    if name == "projector":
        return Vlm3rProjector(config.vision_dim, config.text_dim)
    if name == "image_newline":
        return nn.Parameter(torch.randn(config.text_dim) / math.sqrt(config.text_dim))
    return Qwen2ForCausalLM(Qwen2Config(**config.text))  # "language_model"


class Vlm3rForConditionalGeneration(nn.Module):
    """The VLM-3R model. Build it with ``from_config`` or ``from_pretrained``.

    Submodules (their names are checkpoint keys): ``vision_tower`` (SigLIP, all but the last block),
    ``cut3r``, ``fusion``, ``projector``, ``image_newline`` (D,), ``language_model`` (Qwen2, a
    ``PeftModel`` after ``apply_lora``). A model built with only some ``components`` holds None for
    the others, and a method that needs a missing one raises ``ValueError`` naming it.
    """

    def __init__(self, config: Vlm3rConfig, components: Sequence[str] = COMPONENTS):
        super().__init__()
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown or not components:
            raise ValueError(f"components must be a non-empty subset of {COMPONENTS}, got {components}")
        self.config = config
        for index, name in enumerate(COMPONENTS):
            if name in components:
                # Each part has its own seed, so its init does not depend on which others are built.
                torch.manual_seed(config.seed * len(COMPONENTS) + index)
                setattr(self, name, _build_component(config, name))
            else:
                setattr(self, name, None)
        self.lora_merged = False

    # Construction ----------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: Vlm3rConfig,
        *,
        device: str | torch.device | None = None,
        load_base_weights: bool = True,
        components: Sequence[str] = COMPONENTS,
    ) -> Vlm3rForConditionalGeneration:
        """Builds the model with seeded random weights in ``config.dtype``, encoders and LLM frozen.

        The random init always runs on the CPU (so a model without base weights, like ``tiny``,
        is the same on every machine and device); the model then moves to ``device``. Each
        component is seeded on its own, so it gets the same weights whichever others are built.

        Args:
            device: where the model ends up ("meta" builds shapes only, e.g. to count parameters).
            load_base_weights: load SigLIP / Qwen2 / CUT3R from ``config.vision_weights``,
                ``llm_weights``, ``cut3r_weights`` where set (skipped on "meta").
            components: the parts to build (names in ``COMPONENTS``), e.g. ``("vision_tower",
                "cut3r")`` for the frozen encoders only; the others are None.
        """
        meta = device is not None and torch.device(device).type == "meta"
        with (
            torch.random.fork_rng(devices=[]),
            _default_dtype(config.torch_dtype),
            torch.device("meta" if meta else "cpu"),
        ):
            model = cls(config, components)
        for frozen in (model.vision_tower, model.cut3r, model.language_model):
            if frozen is not None:
                frozen.requires_grad_(False)
        model.train(False)
        if load_base_weights and not meta:
            model.load_base_weights([c for c in BASE_COMPONENTS if c in components])
        return model.to(device) if device is not None and not meta else model

    def load_base_weights(self, components: Sequence[str] = BASE_COMPONENTS) -> None:
        """Loads the referenced base weights of ``components`` (those whose reference is set).

        SigLIP and Qwen2 come from Hugging Face safetensors checkpoints (a folder, URI or hub id):
        a SigLIP checkpoint, a plain Qwen2 checkpoint, or a LLaVA-Video checkpoint in either
        the transformers (``llava-hf``) or the original LLaVA layout, which also provides the
        projector init and the newline token. CUT3R loads with ``geometry.checkpoint.load_cut3r``.
        """
        self.require(components, "load_base_weights")
        refs = {"vision_tower": self.config.vision_weights, "language_model": self.config.llm_weights}
        wanted = {c for c in components if c in refs and refs[c] is not None}
        for ref in sorted({refs[c] for c in wanted}):
            parts = {c for c in wanted if refs[c] == ref}
            if "language_model" in parts:  # optional: LLaVA checkpoints hold them
                parts |= {c for c in ("projector", "image_newline") if getattr(self, c) is not None}
            targets = {c: self.component_state(c) for c in parts}
            loaded = checkpoint.load_base_checkpoint(ref, targets, self.config.vision["num_hidden_layers"] - 1)
            for c in wanted & parts:
                if c not in loaded:
                    raise ValueError(f"{ref}: holds no {c} weights")
        if "cut3r" in components and self.config.cut3r_weights is not None:
            heads = self.config.cut3r  # a config with point heads loads them too (3D export)
            source = load_cut3r(
                self.config.cut3r_weights,
                enable_pose_head=heads.enable_pose_head,
                enable_point_heads=heads.enable_point_heads,
            )
            self.cut3r.load_state_dict(source.state_dict())

    def component_state(self, component: str) -> dict[str, torch.Tensor]:
        """Parameters and buffers of a component under checkpoint names (LoRA wrappers removed)."""
        if component == "image_newline":
            return {"": self.image_newline.data}
        module = getattr(self, component)
        if component == "language_model" and isinstance(module, PeftModel):
            module = module.get_base_model()
        state = {}
        for key, tensor in module.state_dict(keep_vars=True).items():
            if "lora_" in key:
                continue
            state[key.replace(".base_layer.", ".")] = tensor.data
        return state

    @property
    def components(self) -> tuple[str, ...]:
        """The parts this model was built with (names in ``COMPONENTS``)."""
        return tuple(c for c in COMPONENTS if getattr(self, c) is not None)

    def require(self, needed: Sequence[str], what: str) -> None:
        """Raises ``ValueError`` naming the parts in ``needed`` this model was built without."""
        missing = [c for c in needed if getattr(self, c) is None]
        if missing:
            raise ValueError(
                f"{what} needs the {', '.join(missing)} component(s); this model was built with "
                f"components={self.components} (pass them to from_config / from_pretrained)"
            )

    # Encoders --------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_frames(self, pixels: FramePixels) -> VideoFeatures:
        """Runs the frozen encoders: SigLIP on every real frame, CUT3R over each video.

        The one encoder path of the system: token precompute, evaluation from raw video and the
        serving encoder all call it.

        Args:
            pixels: ``FramePixels`` (siglip (B, T, 3, S, S) or None to run CUT3R only, cut3r (B, T,
                3, G, G), frame_mask (B, T)).

        Returns:
            ``VideoFeatures`` with zeros at padding frames (``vision_features`` None without
            SigLIP pixels; ``poses`` when CUT3R's pose head is on).
        """
        self.require(("cut3r",) if pixels.siglip is None else ("vision_tower", "cut3r"), "encode_frames")
        mask = pixels.frame_mask.to(self.device, torch.bool)
        dtype = self.config.torch_dtype
        vision = None
        if pixels.siglip is not None:
            siglip_in = pixels.siglip.to(self.device, dtype)[mask]  # (n, 3, S, S), n real frames
            hidden = siglip_features(self.vision_tower, siglip_in)  # (n, P, Cv)
            b, t = mask.shape
            vision = hidden.new_zeros((b, t, *hidden.shape[1:]))  # (B, T, P, Cv)
            vision[mask] = hidden
        geometry = self.cut3r.encode_video(pixels.cut3r.to(self.device, dtype), mask)
        keep = mask[:, :, None, None]
        return VideoFeatures(
            vision_features=vision,
            camera_tokens=geometry.camera_tokens * keep,  # (B, T, 1, Cs)
            patch_tokens=geometry.patch_tokens * keep,  # (B, T, N, Cs)
            frame_mask=mask,
            poses=None if geometry.poses is None else geometry.poses * mask[:, :, None],  # (B, T, 7)
        )

    def embed_video(self, features: VideoFeatures) -> list[torch.Tensor]:
        """Fusion, projector, pooling and newlines: the LLM tokens of each video.

        Returns:
            B tensors (T_b * h * (h + 1), D), frame-major, rows of h tokens each followed by the
            newline token.
        """
        self.require(("fusion", "projector", "image_newline"), "embed_video")
        cfg = self.config
        mask = features.frame_mask.to(self.device, torch.bool)
        dtype = cfg.torch_dtype
        vision = features.vision_features.to(self.device, dtype)[mask]  # (n, P, Cv)
        spatial = torch.cat([features.camera_tokens, features.patch_tokens], dim=2).to(self.device, dtype)[
            mask
        ]  # (n, 1+N, Cs)
        g, h = cfg.vision_grid, cfg.pooled_grid
        if vision.shape[1] != g * g:
            raise ValueError(
                f"vision features have {vision.shape[1]} tokens per frame, the config expects {g}x{g}"
            )
        x = self.projector(self.fusion(vision, spatial))  # (n, P, D)
        n, _, d = x.shape
        x = x.view(n, g, g, d).permute(0, 3, 1, 2)  # (n, D, g, g)
        x = F.interpolate(x, size=(h, h), mode="bilinear", align_corners=False)  # (n, D, h, h)
        x = x.permute(0, 2, 3, 1)  # (n, h, h, D)
        newline = self.image_newline.to(x.dtype).expand(n, h, 1, d)  # (n, h, 1, D)
        x = torch.cat([x, newline], dim=2).reshape(n, h * (h + 1), d)  # (n, h*(h+1), D)
        counts = mask.sum(dim=1).tolist()
        return [v.reshape(-1, d) for v in torch.split(x, counts)]  # B x (T_b*h*(h+1), D)

    # Language model --------------------------------------------------------------------------------

    def _merge(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        videos: list[torch.Tensor],
        padding_side: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Replaces each prompt's ``<image>`` token by its video tokens and re-pads.

        Args:
            input_ids, attention_mask, labels: (B, L) padded on either side.
            videos: B tensors (K_b, D) from ``embed_video``.
            padding_side: "right" (training) or "left" (generation).

        Returns:
            ``(inputs_embeds (B, L', D), attention_mask (B, L'), labels (B, L') or None)``.
        """
        if len(videos) != input_ids.shape[0]:
            raise ValueError(f"got {len(videos)} videos for {input_ids.shape[0]} prompts")
        embed = self._lm().get_input_embeddings()
        placeholder = self.config.image_token_id
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        labels = None if labels is None else labels.to(self.device)
        rows, row_labels = [], []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids = input_ids[b][keep]
            where = (ids == placeholder).nonzero().flatten()
            if where.numel() != 1:
                raise ValueError(
                    f"sample {b}: expected exactly one {prompting.VIDEO_PLACEHOLDER!r} token "
                    f"(id {placeholder}) in the prompt, found {where.numel()}"
                )
            p = int(where[0])
            video = videos[b].to(embed.weight.dtype)
            rows.append(torch.cat([embed(ids[:p]), video, embed(ids[p + 1 :])]))
            if labels is not None:
                lab = labels[b][keep]
                fill = lab.new_full((video.shape[0],), IGNORE_INDEX)
                row_labels.append(torch.cat([lab[:p], fill, lab[p + 1 :]]))
        length = max(r.shape[0] for r in rows)
        limit = self.config.text.get("max_position_embeddings", length)
        if length > limit:
            b = max(range(len(rows)), key=lambda i: rows[i].shape[0])
            raise ValueError(
                f"sample {b}: {length} tokens ({videos[b].shape[0]} video tokens) exceed the LLM's "
                f"max_position_embeddings {limit}; sample fewer frames"
            )
        batch, d = len(rows), rows[0].shape[1]
        embeds = rows[0].new_zeros((batch, length, d))  # (B, L', D)
        mask = torch.zeros((batch, length), dtype=torch.long, device=embeds.device)
        out_labels = (
            None
            if labels is None
            else torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
        )
        for b, row in enumerate(rows):
            span = slice(0, row.shape[0]) if padding_side == "right" else slice(length - row.shape[0], length)
            embeds[b, span] = row
            mask[b, span] = 1
            if out_labels is not None:
                out_labels[b, span] = row_labels[b]
        return embeds, mask, out_labels

    def _videos(self, features: VideoFeatures | None, pixels: FramePixels | None) -> list[torch.Tensor]:
        if (features is None) == (pixels is None):
            raise ValueError("pass exactly one of features= (precomputed) or pixels= (raw frames)")
        needed = ("fusion", "projector", "image_newline", "language_model")
        if pixels is not None:
            needed = ("vision_tower", "cut3r", *needed)
        self.require(needed, "forward / generate" if pixels is None else "forward / generate with pixels=")
        return self.embed_video(self.encode_frames(pixels) if features is None else features)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        features: VideoFeatures | None = None,
        pixels: FramePixels | None = None,
    ) -> Vlm3rOutput:
        """Runs the model on prompts with one video each.

        Args:
            input_ids: (B, L) from ``Vlm3rProcessor.build_batch`` (one ``<image>`` per row).
            attention_mask: (B, L).
            labels: (B, L) answer tokens, ``IGNORE_INDEX`` elsewhere; None for logits only.
            features: precomputed ``VideoFeatures`` (B videos), or
            pixels: ``FramePixels`` (B videos); exactly one of the two.

        Returns:
            ``Vlm3rOutput`` (loss with labels, else logits (B, L', V) over the merged sequence).
        """
        videos = self._videos(features, pixels)
        embeds, mask, merged_labels = self._merge(input_ids, attention_mask, labels, videos, "right")
        lm = self._lm()
        hidden = lm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, L', D)
        if merged_labels is None:
            return Vlm3rOutput(loss=None, logits=lm.lm_head(hidden))
        targets = merged_labels[:, 1:]  # (B, L'-1), token t+1 is predicted at t
        supervised = targets != IGNORE_INDEX
        if not supervised.any():
            raise ValueError("labels supervise no token (every label is IGNORE_INDEX)")
        logits = lm.lm_head(hidden[:, :-1][supervised])  # (n_sup, V)
        loss = F.cross_entropy(logits.float(), targets[supervised])
        return Vlm3rOutput(loss=loss, logits=None, label_logits=logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: VideoFeatures | None = None,
        pixels: FramePixels | None = None,
        max_new_tokens: int = 16,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        streamer=None,
        vocab_size: int | None = None,
        suppress_ids: Sequence[int] = (),
        stopping_criteria=None,
    ) -> torch.Tensor:
        """Greedy or sampled decoding for a batch of videos of different lengths.

        Prompts are re-padded on the left after the video tokens are inserted. Decoding stops at
        ``<|im_end|>``. ``streamer`` (a ``transformers`` ``BaseStreamer``) receives the (B,) new
        tokens of every step, after one first call with the (empty) prompt ids (serving streams).
        Ids at or past ``vocab_size`` (the tokenizer's length: the LM head's padding rows), the
        video placeholder (an answer holding it could not be fed back to the model) and
        ``suppress_ids`` are never generated (:func:`mask_unproducible_logits`).
        ``stopping_criteria`` (a ``transformers`` ``StoppingCriteriaList``) may end rows early: a
        row it marks done gets ``pad_token_id`` from then on, and decoding ends when every row is.

        Returns:
            (B, L_new) int64 new token ids (``pad_token_id`` after a row's end token).
        """
        videos = self._videos(features, pixels)
        embeds, mask, _ = self._merge(input_ids, attention_mask, None, videos, "left")
        sampling = dict(temperature=temperature, top_p=top_p) if do_sample else {}
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=self.config.text["eos_token_id"],
            pad_token_id=self.config.text["pad_token_id"],
            streamer=streamer,
            logits_processor=LogitsProcessorList(
                [_MaskUnproducible(vocab_size, (self.config.image_token_id, *suppress_ids))]
            ),
            stopping_criteria=stopping_criteria,
            **sampling,
        )

    def _lm(self) -> Qwen2ForCausalLM:
        """The Qwen2 model (inside the LoRA wrapper when applied; LoRA layers stay active)."""
        self.require(("language_model",), "the language model")
        lm = self.language_model
        return lm.get_base_model() if isinstance(lm, PeftModel) else lm

    # Training surface ------------------------------------------------------------------------------

    def apply_lora(
        self, r: int | None = None, alpha: int | None = None, dropout: float | None = None
    ) -> None:
        """Wraps every linear layer of the LLM (not the LM head) with LoRA (peft).

        Defaults come from the config (r 128, alpha 256, dropout 0.05 for ``vlm3r-7b``); values
        given here are written back into ``self.config``.
        """
        self.require(("language_model",), "apply_lora")
        if isinstance(self.language_model, PeftModel):
            raise ValueError("LoRA is already applied")
        self.config = self.config.replace(
            lora_r=self.config.lora_r if r is None else r,
            lora_alpha=self.config.lora_alpha if alpha is None else alpha,
            lora_dropout=self.config.lora_dropout if dropout is None else dropout,
        )
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in self.language_model.named_modules()
                if isinstance(m, nn.Linear)
            }
            - {"lm_head"}
        )
        lora = LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with torch.device(self.device):  # LoRA weights are created where the model lives (also "meta")
            self.language_model = get_peft_model(self.language_model, lora)
        self.language_model.train(self.training)  # new LoRA dropout layers follow the model's mode

    def merge_and_unload(self) -> None:
        """Folds LoRA into the LLM weights (serving); saving afterwards stores the merged LLM."""
        if not isinstance(self.language_model, PeftModel):
            raise ValueError("no LoRA to merge")
        self.language_model = self.language_model.merge_and_unload()
        self.lora_merged = True

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: fusion, projector, newline and LoRA (after ``apply_lora``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing of the LLM blocks (the 6,720 video tokens dominate memory)."""
        self._lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # Save / load -----------------------------------------------------------------------------------

    def save_pretrained(self, uri: str, processor=None) -> None:
        """Writes the model under a folder URI (local path, ``file://`` or ``s3://``) in the layout
        of :mod:`vlm3r_core.vlm.checkpoint`, with ``processor``'s tokenizer (else the config's)."""
        checkpoint.save_model(self, uri, processor)

    @classmethod
    def from_pretrained(
        cls,
        uri: str,
        device: str | torch.device | None = None,
        components: Sequence[str] = COMPONENTS,
        cut3r_point_heads: bool = False,
    ) -> Vlm3rForConditionalGeneration:
        """Loads a model written by ``save_pretrained`` (or by ``vlm3r_core.vlm.convert``).

        ``components`` picks the parts to build and load, as in ``from_config``.
        ``cut3r_point_heads`` builds CUT3R with its point heads (3D exports) even when the saved
        config has none: loaded from the CUT3R weight reference, or from the seed for a seeded
        CUT3R (the other CUT3R weights are the same either way).

        Raises:
            ValueError: ``cut3r_point_heads`` for a model whose CUT3R is stored without them.
        """
        meta = checkpoint.read_saved_meta(uri)
        stored = {c for c in meta["stored_components"] if c in components}
        config = Vlm3rConfig.from_dict(meta["config"])
        if cut3r_point_heads and not config.cut3r.enable_point_heads:
            if "cut3r" in stored:
                raise ValueError(f"{uri}: its CUT3R is stored without point heads, so they cannot be added")
            config = config.with_cut3r_point_heads()
        model = cls.from_config(config, load_base_weights=False, components=components)
        model.load_base_weights([c for c in BASE_COMPONENTS if c in components and c not in stored])
        checkpoint.load_saved_weights(model, uri, meta)
        return model.to(device) if device is not None else model
