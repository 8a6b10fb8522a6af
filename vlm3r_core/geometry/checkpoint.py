"""Reading and writing CUT3R weights: the official `.pth` layout and our safetensors folder.

Official layout (`cut3r_512_dpt_4_64.pth`, `cut3r_224_linear_4.pth`): a `torch.save`d dict with
`model` (the state dict, key names = our module names) and `args` (the training run's OmegaConf
config, whose `args.model` is the constructor string, e.g.
"ARCroco3DStereo(ARCroco3DStereoConfig(state_size=768, ..., dec_num_heads=12))").

- The constructor string is parsed with `ast` into literal keyword values; it is never evaluated.
- The pickle is read with `torch.load(weights_only=True)`. `args` names classes of OmegaConf
  (and `typing.Any`, `collections.defaultdict`, ...) that weights-only loading refuses. Each such
  name is bound to an inert record class that only stores the constructor arguments and state the
  pickle hands it; no function or class from the file is ever called, so loading cannot run code.
  Tensors are rebuilt by torch's own allow-listed functions, and every `model` entry must be a
  tensor.
- The DPT widths are read from the weights (the constructor string does not record them).
- Keys the token path never uses are skipped and reported: the ray-map branch
  (`patch_embed_ray_map`, `enc_blocks_ray_map`, `enc_norm_ray_map`, `masked_ray_map_token`),
  `masked_img_token`, and the parts of `downstream_head` that the config does not keep. The DPT
  convs stored twice (`scratch.layerK_rn` and its alias `scratch.layer_rn.{K-1}`) are folded.
  Anything else that does not match raises `Cut3rCheckpointError` naming the keys.

Our form (`save_pretrained`): a folder with `config.json` (the `Cut3rConfig` fields) and
`model.safetensors` (the state dict of the parts the config keeps).
"""

from __future__ import annotations

import ast
import dataclasses
import io
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import safetensors.torch
import torch

from vlm3r_core import storage
from vlm3r_core.geometry.config import Cut3rConfig
from vlm3r_core.geometry.cut3r import Cut3r

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Cut3rCheckpointError",
    "LoadReport",
    "config_from_constructor",
    "convert_official_state_dict",
    "load_cut3r",
    "parse_constructor",
    "read_official_checkpoint",
    "save_cut3r",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "vlm3r-cut3r"

# Official keys that no part of our model uses (novel-view ray maps; image-less frames).
UNUSED_PREFIXES = (
    "patch_embed_ray_map.",
    "enc_blocks_ray_map.",
    "enc_norm_ray_map.",
    "masked_ray_map_token",
    "masked_img_token",
)
_DPT_ALIAS = re.compile(r"^(.*\.scratch\.)layer([1-4])_rn\.weight$")


class Cut3rCheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped keys."""


@dataclass
class LoadReport:
    """What happened to each checkpoint key."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # known keys the chosen parts do not use
    missing: list[str] = field(default_factory=list)  # the model needs them, the file lacks them
    unexpected: list[str] = field(default_factory=list)  # the file has them, no model has them
    mismatched: list[str] = field(default_factory=list)  # "key: file shape vs model shape"

    def raise_if_bad(self, source: str) -> None:
        problems = []
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
                problems.append(f"{len(keys)} {name} key(s): {shown}")
        if problems:
            raise Cut3rCheckpointError(
                f"{source}: checkpoint does not match the CUT3R model: " + "; ".join(problems)
            )


# ---------------------------------------------------------------------------- constructor string


def _literal(node: ast.AST):
    """Literal value of an AST node: constants, tuples, lists, `inf`, negation. Nothing else."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id == "inf":
        return float("inf")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if not isinstance(value, (int, float)):
            raise ValueError("sign applied to a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    raise ValueError(f"not a literal: {ast.dump(node)}")


def parse_constructor(text: str) -> dict:
    """Keyword arguments of "ARCroco3DStereo(ARCroco3DStereoConfig(k=v, ...))", parsed, not run."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "ARCroco3DStereo"
                and len(tree.args) == 1 and not tree.keywords):  # fmt: skip
            raise ValueError("expected ARCroco3DStereo(ARCroco3DStereoConfig(...))")
        inner = tree.args[0]
        if not (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
                and inner.func.id == "ARCroco3DStereoConfig" and not inner.args):  # fmt: skip
            raise ValueError("expected ARCroco3DStereoConfig(keyword=value, ...)")
        return {kw.arg: _literal(kw.value) for kw in inner.keywords}
    except (SyntaxError, ValueError) as e:
        raise Cut3rCheckpointError(f"cannot parse the CUT3R constructor string {text[:200]!r}: {e}") from e


# Constructor arguments whose released values our implementation assumes.
_REQUIRED_ARGS = {
    "output_mode": "pts3d+pose",
    "pose_head": True,
    "state_pe": "2d",
    "depth_mode": ("exp", -float("inf"), float("inf")),
    "conf_mode": ("exp", 1, float("inf")),
    "pose_mode": ("exp", -float("inf"), float("inf")),
    "depth_head": False,
    "pose_conf_head": False,
    "norm_im2_in_dec": True,
}
# Arguments that only matter for training or input handling (no effect on the weights or maths).
_IGNORED_ARGS = {"freeze", "landscape_only", "patch_embed_cls", "img_size", "ray_enc_depth", "mask_ratio"}
# Defaults of ARCroco3DStereoConfig / CrocoConfig for arguments the string leaves out.
_OFFICIAL_DEFAULTS = {
    "patch_size": 16, "enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12, "dec_embed_dim": 512,
    "dec_depth": 8, "dec_num_heads": 16, "mlp_ratio": 4.0, "state_size": 324, "pose_memory_size": 256,
    "state_dec_num_heads": 16, "head_type": "linear", "enable_rgb_head": False,
}  # fmt: skip
# Official name -> Cut3rConfig field.
_RENAMED_ARGS = {
    "enc_embed_dim": "enc_embed_dim", "enc_depth": "enc_depth", "enc_num_heads": "enc_num_heads",
    "dec_embed_dim": "dec_embed_dim", "dec_depth": "dec_depth", "dec_num_heads": "dec_num_heads",
    "state_dec_num_heads": "state_dec_num_heads", "state_size": "state_size",
    "local_mem_size": "pose_memory_size", "patch_size": "patch_size", "mlp_ratio": "mlp_ratio",
    "head_type": "head_type", "rgb_head": "enable_rgb_head",
}  # fmt: skip


def config_from_constructor(text: str, **overrides) -> Cut3rConfig:
    """Cut3rConfig of an official constructor string (defaults = the official class defaults)."""
    kwargs = parse_constructor(text)
    fields = dict(_OFFICIAL_DEFAULTS)
    for name, value in kwargs.items():
        if name in _REQUIRED_ARGS:
            expected = _REQUIRED_ARGS[name]
            if (tuple(value) if isinstance(value, list) else value) != expected:
                raise Cut3rCheckpointError(
                    f"unsupported CUT3R variant: {name}={value!r} (supported: {expected!r})"
                )
        elif name == "pos_embed":
            if not (isinstance(value, str) and value.startswith("RoPE")):
                raise Cut3rCheckpointError(
                    f"unsupported CUT3R variant: pos_embed={value!r} (supported: RoPE<base>)"
                )
            fields["rope_base"] = float(value[len("RoPE") :])
        elif name in _RENAMED_ARGS:
            fields[_RENAMED_ARGS[name]] = value
        elif name not in _IGNORED_ARGS:
            raise Cut3rCheckpointError(f"unknown CUT3R constructor argument {name}={value!r}")
    if kwargs.get("pose_head") is not True:
        raise Cut3rCheckpointError("unsupported CUT3R variant: the released models have pose_head=True")
    if kwargs.get("pos_embed") is None:
        raise Cut3rCheckpointError(
            "unsupported CUT3R variant: no pos_embed (the released models use RoPE100)"
        )
    fields.update(overrides)
    return Cut3rConfig(**fields)


# ---------------------------------------------------------------------------- safe unpickling


class _InertRecord:
    """Bound to a global named in a pickle that weights-only loading does not allow.

    Calling it (pickle REDUCE/NEWOBJ) or restoring its state (BUILD) only stores what the pickle
    provides; nothing from the file is executed.
    """

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record.args, record.state, record.items = args, None, {}
        return record

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.items[key] = value


def _inert_globals(names: Iterable[str]) -> list[tuple[type, str]]:
    return [
        (type(name.rsplit(".", 1)[-1], (_InertRecord,), {"__module__": __name__}), name) for name in names
    ]


def _find_constructor(obj, seen: set[int] | None = None, depth: int = 0) -> str | None:
    """Depth-first search of the unpickled `args` for the "ARCroco3DStereo(" constructor string."""
    seen = set() if seen is None else seen
    if isinstance(obj, str):
        return obj if obj.lstrip().startswith("ARCroco3DStereo(") else None
    if id(obj) in seen or depth > 50:
        return None
    seen.add(id(obj))
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif isinstance(obj, _InertRecord):
        children = [obj.state, obj.items, obj.args]
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    for child in children:
        found = _find_constructor(child, seen, depth + 1)
        if found is not None:
            return found
    return None


def read_official_checkpoint(uri: str) -> tuple[dict[str, torch.Tensor], str]:
    """Reads an official `.pth` (local path or URI): returns (state dict, constructor string)."""
    local = not storage.is_remote(uri)
    if local:
        source = storage.filesystem(uri)[1]
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{uri}: no such checkpoint file")
    else:
        source = io.BytesIO(storage.read_bytes(uri))
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    if not local:
        source.seek(0)
    with torch.serialization.safe_globals(_inert_globals(unsafe)):
        checkpoint = torch.load(source, map_location="cpu", weights_only=True, mmap=local)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise Cut3rCheckpointError(
            f"{uri}: not an official CUT3R checkpoint (expected a dict with 'model' and 'args')"
        )
    state_dict = checkpoint["model"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise Cut3rCheckpointError(f"{uri}: 'model' entries that are not tensors: {bad[:10]}")
    if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from DataParallel/DDP
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    constructor = _find_constructor(checkpoint.get("args"))
    if constructor is None:
        raise Cut3rCheckpointError(f"{uri}: no 'args' with the model constructor string (args.model)")
    return state_dict, constructor


# ---------------------------------------------------------------------------- key mapping


def _dpt_widths(state_dict: dict[str, torch.Tensor]) -> dict:
    """DPT widths read from the weights: the constructor string does not record them (the
    released code fixes them at 96/192/384/768 and 256; test checkpoints use toy widths)."""
    prefix = "downstream_head.dpt_self."
    if f"{prefix}act_postprocess.0.0.weight" not in state_dict:
        return {}
    layer_dims = tuple(state_dict[f"{prefix}act_postprocess.{i}.0.weight"].shape[0] for i in range(4))
    return {
        "dpt_layer_dims": layer_dims,
        "dpt_feature_dim": state_dict[f"{prefix}scratch.refinenet1.out_conv.weight"].shape[0],
    }


def _skippable(key: str, config: Cut3rConfig) -> bool:
    """True for official keys that exist in some released model but not in one built from `config`."""
    if key.startswith(UNUSED_PREFIXES):
        return True
    if key.startswith("downstream_head.pose_head."):
        return not config.enable_pose_head
    return key.startswith("downstream_head.") and not config.enable_point_heads


def convert_official_state_dict(
    state_dict: dict[str, torch.Tensor], model: Cut3r
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Maps official keys onto `model`'s: folds DPT aliases, skips unused parts."""
    folded = {}
    for key, value in state_dict.items():
        alias = _DPT_ALIAS.match(key)
        if alias:
            target = f"{alias.group(1)}layer_rn.{int(alias.group(2)) - 1}.weight"
            if target in state_dict:
                if not torch.equal(state_dict[target], value):
                    raise Cut3rCheckpointError(f"{key} and its alias {target} hold different values")
                continue
            key = target
        folded[key] = value
    return _match(folded, model)


def _match(state_dict: dict[str, torch.Tensor], model: Cut3r) -> tuple[dict[str, torch.Tensor], LoadReport]:
    expected = model.state_dict()
    report, kept = LoadReport(), {}
    for key, value in state_dict.items():
        if key in expected:
            if tuple(value.shape) != tuple(expected[key].shape):
                report.mismatched.append(f"{key}: {tuple(value.shape)} vs {tuple(expected[key].shape)}")
            else:
                kept[key] = value
                report.loaded.append(key)
        elif _skippable(key, model.config):
            report.skipped.append(key)
        else:
            report.unexpected.append(key)
    report.missing = [k for k in expected if k not in state_dict]
    return kept, report


def _build(
    config: Cut3rConfig, state_dict: dict[str, torch.Tensor], report: LoadReport, source: str
) -> Cut3r:
    report.raise_if_bad(source)
    with torch.device("meta"):
        model = Cut3r(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if report.skipped:
        groups = sorted({k.split(".")[0] if not k.startswith("downstream_head.") else ".".join(k.split(".")[:2])
                         for k in report.skipped})  # fmt: skip
        logger.info("%s: loaded %d tensors, skipped %d unused (%s)", source, len(report.loaded),
                    len(report.skipped), ", ".join(groups))  # fmt: skip
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------- public entry points


def load_cut3r(path_or_uri: str, **config_overrides) -> Cut3r:
    """Loads a CUT3R model from an official `.pth` file or a `save_cut3r` folder (local or URI)."""
    if storage.exists(storage.join(path_or_uri, CONFIG_FILE)):
        return _load_folder(path_or_uri, config_overrides)
    if not storage.exists(path_or_uri):
        raise FileNotFoundError(f"{path_or_uri}: no such CUT3R checkpoint (an official .pth file or a "
                                f"folder with {CONFIG_FILE} and {WEIGHTS_FILE})")  # fmt: skip
    state_dict, constructor = read_official_checkpoint(path_or_uri)
    config = config_from_constructor(constructor, **{**_dpt_widths(state_dict), **config_overrides})
    with torch.device("meta"):
        template = Cut3r(config)
    kept, report = convert_official_state_dict(state_dict, template)
    return _build(config, kept, report, path_or_uri)


def _load_folder(uri: str, config_overrides: dict) -> Cut3r:
    meta = storage.read_json(storage.join(uri, CONFIG_FILE))
    if meta.get("format") != FORMAT_NAME:
        raise Cut3rCheckpointError(f"{uri}/{CONFIG_FILE}: not a CUT3R folder (format={meta.get('format')!r})")
    config = Cut3rConfig(**{**meta["config"], **config_overrides})
    state_dict = safetensors.torch.load(storage.read_bytes(storage.join(uri, WEIGHTS_FILE)))
    with torch.device("meta"):
        template = Cut3r(config)
    kept, report = _match(state_dict, template)
    return _build(config, kept, report, uri)


def save_cut3r(model: Cut3r, uri: str) -> None:
    """Writes `config.json` and `model.safetensors` (the kept parts, in the model's dtype) to `uri`."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), safetensors.torch.save(tensors))
    storage.write_json(
        storage.join(uri, CONFIG_FILE), {"format": FORMAT_NAME, "config": dataclasses.asdict(model.config)}
    )
