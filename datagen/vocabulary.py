"""Question vocabularies: which object labels a question may name, and by which name, per dataset.

Scenes keep their source's raw labels as ``category`` (ScanNet aggregation labels such as
"office chair" or "kitchen cabinets", ScanNet++ ``segGroups`` labels, ARKitScenes 3DOD labels).
VSI-Bench asks only about a fixed vocabulary per dataset, with a few labels merged under one name.
Two choices:

- ``"vsibench"``: the benchmark's vocabulary. A raw label outside it is never named by a question;
  a merged label is asked about by its merged name ("trash can" and "recycling bin" are both
  "trash bin", so they are counted together). Synthetic scenes are asked about every label (their
  world has its own, already question-ready vocabulary, :mod:`datagen.synthetic.vocabulary`).
- ``"all"``: every raw label, as it is.

Labels match exactly (case included): "office chair" is not "chair" in ScanNet.

Sources (public code of the VSI-Bench authors as shipped in VITA-Group/VLM-3R, checked against
the categories present in the released VSI-Bench meta files, vision-x-nyu/thinking-in-space
``data/meta_info/{scannet,scannetpp,arkitscenes}_meta_info_val.json``):

- ScanNet: ``vlm_3r_data_process/src/utils/scannetv2_utils.py`` (``SCANNETV2_VALID_CATEGORY_NAME``)
  and ``vlm_3r_data_process/src/utils/scannet200_utils.py`` (``SCANNET200_VALID_CATEGORY_NAME``,
  ``SCANNET200_CLASS_REMAPPER``); the same lists were confirmed by the VSI-Bench author in
  vision-x-nyu/thinking-in-space#39.
- ScanNet++: ``vlm_3r_data_process/src/utils/scannetpp_utils.py`` (``SCANNETPP_INST_SEG_CATEGORY``,
  the 84 instance classes, minus ``INVALID_CATES``, with ``CATE_MAPPER``). The released meta holds
  43 categories, all inside this vocabulary, with the merged names ("ceiling light", "computer
  mouse") and without "office chair", "cabinet" or "window". The per-scene exceptions of that file
  (``magic_category_checker``) are not reproduced.
- ARKitScenes: the 17 3DOD classes minus ``INVALID_CATES`` of
  ``vlm_3r_data_process/src/utils/arkitscenes_utils.py``, "tv_monitor" asked as "tv"
  (``CATE_MAPPER``); the released meta holds exactly these 13 names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

VocabularyChoice = Literal["vsibench", "all"]
VOCABULARIES: tuple[str, ...] = get_args(VocabularyChoice)

# ---- ScanNet (raw aggregation labels) --------------------------------------------------------

# scannetv2_utils.py: SCANNETV2_VALID_CATEGORY_NAME.
SCANNET_V2_LABELS = (
    "bed", "chair", "sofa", "table", "window", "bookshelf", "counter", "desk", "refrigerator",
)  # fmt: skip
# scannet200_utils.py: SCANNET200_VALID_CATEGORY_NAME (28 entries there, "printer" twice).
SCANNET200_LABELS = (
    "pillow", "monitor", "door", "lamp", "printer", "towel", "tv", "nightstand", "plant", "keyboard",
    "backpack", "trash bin", "trash can", "recycling bin", "closet", "microwave", "fan", "washing machine",
    "mirror", "piano", "radiator", "telephone", "clock", "guitar", "bicycle", "oven", "mouse",
)  # fmt: skip
# scannet200_utils.py: SCANNET200_CLASS_REMAPPER, as raw label -> name asked.
SCANNET_MERGES = {"trash can": "trash bin", "recycling bin": "trash bin", "mouse": "computer mouse"}

# ---- ScanNet++ (raw segGroups labels) --------------------------------------------------------

# scannetpp_utils.py: SCANNETPP_INST_SEG_CATEGORY (also in
# metadata_generation/ScanNetpp/scannetpp_metadata.py), the 84 instance classes.
SCANNETPP_INST_SEG_LABELS = (
    "table", "door", "ceiling lamp", "cabinet", "blinds", "curtain", "chair", "storage cabinet",
    "office chair", "bookshelf", "whiteboard", "window", "box", "monitor", "shelf", "heater",
    "kitchen cabinet", "sofa", "bed", "trash can", "book", "plant", "blanket", "tv", "computer tower",
    "refrigerator", "jacket", "sink", "bag", "picture", "pillow", "towel", "suitcase", "backpack",
    "crate", "keyboard", "rack", "toilet", "printer", "poster", "painting", "microwave", "shoes",
    "socket", "bottle", "bucket", "cushion", "basket", "shoe rack", "telephone", "file folder", "laptop",
    "plant pot", "exhaust fan", "cup", "coat hanger", "light switch", "speaker", "table lamp", "kettle",
    "smoke detector", "container", "power strip", "slippers", "paper bag", "mouse", "cutting board",
    "toilet paper", "paper towel", "pot", "clock", "pan", "tap", "jar", "soap dispenser", "binder",
    "bowl", "tissue box", "whiteboard eraser", "toilet brush", "spray bottle", "headphones", "stapler",
    "marker",
)  # fmt: skip
# scannetpp_utils.py: INVALID_CATES (ambiguous, too small or too many per scene).
SCANNETPP_EXCLUDED = frozenset(
    {
        "binder", "poster", "blinds", "curtain", "window", "backpack", "bag", "book", "bottle", "box",
        "container", "jacket", "jar", "light switch", "marker", "painting", "paper towel", "plant pot", "pot",
        "shelf", "sink", "smoke detector", "soap dispenser", "socket", "speaker", "spray bottle", "tap",
        "tissue box", "toilet brush", "toilet paper", "towel", "whiteboard eraser", "cabinet",
        "kitchen cabinet", "storage cabinet",
    }
)  # fmt: skip
# scannetpp_utils.py: CATE_MAPPER, as raw label -> name asked (its cabinet merge only names
# excluded labels).
SCANNETPP_MERGES = {"office chair": "chair", "ceiling lamp": "ceiling light", "mouse": "computer mouse"}

# ---- ARKitScenes (3DOD annotation labels) ----------------------------------------------------

ARKITSCENES_LABELS = (
    "cabinet", "refrigerator", "shelf", "stove", "bed", "sink", "washer", "toilet", "bathtub", "oven",
    "dishwasher", "fireplace", "stool", "chair", "table", "tv_monitor", "sofa",
)  # fmt: skip
# arkitscenes_utils.py: INVALID_CATES and CATE_MAPPER.
ARKITSCENES_EXCLUDED = frozenset({"sink", "shelf", "oven", "cabinet"})
ARKITSCENES_MERGES = {"tv_monitor": "tv"}


@dataclass(frozen=True)
class Vocabulary:
    """The names questions about one dataset may use.

    Attributes:
        labels: the raw labels that are asked about; ``None`` for every label.
        merges: raw label -> the name it is asked by (labels not in it keep their own name).
    """

    labels: frozenset[str] | None = None
    merges: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.labels is not None and not set(self.merges) <= self.labels:
            raise ValueError(
                f"merged labels {sorted(set(self.merges) - self.labels)} are not in the vocabulary"
            )

    def name(self, label: str) -> str | None:
        """The name a question uses for an object with this raw label, or None if it is never named."""
        if self.labels is not None and label not in self.labels:
            return None
        return self.merges.get(label, label)

    def table(self) -> dict[str, str] | None:
        """Raw label -> name, sorted by label (``None`` for every label as it is), for manifests."""
        if self.labels is None:
            return None
        return {label: self.name(label) for label in sorted(self.labels)}


EVERY_LABEL = Vocabulary()
_BENCHMARK = {
    "scannet": Vocabulary(frozenset(SCANNET_V2_LABELS + SCANNET200_LABELS), SCANNET_MERGES),
    "scannetpp": Vocabulary(frozenset(SCANNETPP_INST_SEG_LABELS) - SCANNETPP_EXCLUDED, SCANNETPP_MERGES),
    "arkitscenes": Vocabulary(frozenset(ARKITSCENES_LABELS) - ARKITSCENES_EXCLUDED, ARKITSCENES_MERGES),
    "synthetic": EVERY_LABEL,
}


def question_vocabulary(dataset: str, choice: VocabularyChoice) -> Vocabulary:
    """The vocabulary questions about a scene of ``dataset`` use under ``choice``.

    Raises:
        ValueError: for an unknown choice, or a dataset without a benchmark vocabulary.
    """
    if choice not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {choice!r}; known: {list(VOCABULARIES)}")
    if dataset not in _BENCHMARK:
        raise ValueError(f"dataset {dataset!r} has no question vocabulary; known: {sorted(_BENCHMARK)}")
    return EVERY_LABEL if choice == "all" else _BENCHMARK[dataset]


def vocabulary_tables(choice: VocabularyChoice) -> dict[str, dict[str, str] | None]:
    """Dataset -> :meth:`Vocabulary.table` under ``choice``, for every dataset (manifests, cache keys)."""
    return {dataset: question_vocabulary(dataset, choice).table() for dataset in sorted(_BENCHMARK)}
