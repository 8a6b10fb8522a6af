"""The VLM-3R vision-language model: config, model, processor (see ``model.py``)."""

from vlm3r_core.vlm.config import COMPONENTS, Vlm3rConfig
from vlm3r_core.vlm.model import VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rOutput
from vlm3r_core.vlm.processor import IGNORE_INDEX, FramePixels, TextBatch, Vlm3rProcessor

__all__ = [
    "COMPONENTS",
    "IGNORE_INDEX",
    "FramePixels",
    "TextBatch",
    "VideoFeatures",
    "Vlm3rConfig",
    "Vlm3rForConditionalGeneration",
    "Vlm3rOutput",
    "Vlm3rProcessor",
]
