"""Helpers for the CUT3R tests: random frames and checkpoints written in the official layout."""

from __future__ import annotations

import sys
import types
import typing
from collections import defaultdict

import torch

from vlm3r_core.geometry import Cut3r

# The constructor string of the released 512 model with the `tiny` preset's sizes.
TINY_CONSTRUCTOR = (
    "ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=16, state_pe='2d', "
    "pos_embed='RoPE100', rgb_head=True, pose_head=True, patch_embed_cls='ManyAR_PatchEmbed', "
    "img_size=(512, 512), head_type='dpt', output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), "
    "conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf), enc_embed_dim=64, enc_depth=2, "
    "enc_num_heads=4, dec_embed_dim=48, dec_depth=2, dec_num_heads=4, landscape_only=False, "
    "state_dec_num_heads=4, local_mem_size=8))"
)


def random_frames(B: int, T: int, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, 3, height, width, generator=generator) * 2 - 1


def official_state_dict(model: Cut3r) -> dict[str, torch.Tensor]:
    """`model`'s weights under the official key set: plus the ray-map branch, the masked tokens
    and the DPT conv aliases `scratch.layerK_rn` (the same tensors as `scratch.layer_rn.{K-1}`)."""
    state = dict(model.state_dict())
    for key in list(state):
        if ".scratch.layer_rn." in key:
            index = int(key.split(".scratch.layer_rn.")[1].split(".")[0])
            state[key.replace(f"scratch.layer_rn.{index}.", f"scratch.layer{index + 1}_rn.")] = state[key]
    cfg = model.config
    c, p = cfg.enc_embed_dim, cfg.patch_size
    state["patch_embed_ray_map.proj.weight"] = torch.randn(c, 6, p, p)
    state["patch_embed_ray_map.proj.bias"] = torch.randn(c)
    for key, value in model.state_dict().items():
        if key.startswith("enc_blocks.0."):
            for block in range(2):
                state[key.replace("enc_blocks.0.", f"enc_blocks_ray_map.{block}.")] = torch.randn_like(value)
    state["enc_norm_ray_map.weight"] = torch.ones(c)
    state["enc_norm_ray_map.bias"] = torch.zeros(c)
    state["masked_img_token"] = torch.randn(1, c)
    state["masked_ray_map_token"] = torch.randn(1, c)
    return state


def _fake_omegaconf_module(monkeypatch) -> types.SimpleNamespace:
    """Classes pickled under OmegaConf's names, with OmegaConf's pickled structure (a container's
    `__dict__` holding `_metadata`, `_parent`, `_content` of nodes with `_val`), so the file names
    the same globals as a real checkpoint without OmegaConf installed."""
    classes = {}
    if "omegaconf" not in sys.modules:
        monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    for module_name, class_name in [
        ("omegaconf.dictconfig", "DictConfig"),
        ("omegaconf.nodes", "AnyNode"),
        ("omegaconf.base", "ContainerMetadata"),
        ("omegaconf.base", "Metadata"),
    ]:
        module = sys.modules.get(module_name) or types.ModuleType(module_name)
        monkeypatch.setitem(sys.modules, module_name, module)
        cls = type(class_name, (), {"__module__": module_name, "__qualname__": class_name})
        setattr(module, class_name, cls)
        classes[class_name] = cls
    return types.SimpleNamespace(**classes)


def make_official_args(monkeypatch, constructor: str):
    """An `args` object that pickles like the OmegaConf DictConfig of a CUT3R training run."""
    oc = _fake_omegaconf_module(monkeypatch)
    root = oc.DictConfig()
    root.__dict__.update(_metadata=oc.ContainerMetadata(), _parent=None, _content={})
    root._metadata.__dict__.update(
        ref_type=typing.Any, object_type=dict, key_type=typing.Any, element_type=typing.Any,
        optional=True, flags={}, resolver_cache=defaultdict(dict),
    )  # fmt: skip
    for key, value in {"model": constructor, "lr": 1e-4, "num_views": 4}.items():
        node = oc.AnyNode()
        node.__dict__.update(_val=value, _parent=root, _metadata=oc.Metadata())
        node._metadata.__dict__.update(
            ref_type=typing.Any, object_type=None, optional=True, key=key, flags={}
        )
        root._content[key] = node
    return root


def write_official_checkpoint(path, model: Cut3r, constructor: str, monkeypatch) -> dict[str, torch.Tensor]:
    """Writes `{"model", "args", "epoch"}` with torch.save, as the CUT3R training script does."""
    state = official_state_dict(model)
    torch.save({"model": state, "args": make_official_args(monkeypatch, constructor), "epoch": 10}, path)
    return state
