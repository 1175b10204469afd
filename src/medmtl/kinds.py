"""Task kinds: what a task predicts, and the sets of kinds every layer branches on, defined once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class KindInfo:
    """``classification``: labels are classes (stratified splits, class tables); ``single_label``:
    one class per image, scored by a softmax into one ``score_<class>`` column per class of
    ``predictions.csv``; ``dense``: a mask or a box per image, scored per image."""

    classification: bool
    single_label: bool
    dense: bool


TaskKind = Literal["binary", "multiclass", "multilabel", "ordinal", "segmentation", "detection"]
KINDS: dict[str, KindInfo] = {
    "binary": KindInfo(classification=True, single_label=True, dense=False),
    "multiclass": KindInfo(classification=True, single_label=True, dense=False),
    "ordinal": KindInfo(classification=True, single_label=True, dense=False),
    "multilabel": KindInfo(classification=True, single_label=False, dense=False),
    "segmentation": KindInfo(classification=False, single_label=False, dense=True),
    "detection": KindInfo(classification=False, single_label=False, dense=True),
}
CLASSIFICATION_KINDS = frozenset(k for k, i in KINDS.items() if i.classification)
SINGLE_LABEL_KINDS = frozenset(k for k, i in KINDS.items() if i.single_label)
DENSE_KINDS = frozenset(k for k, i in KINDS.items() if i.dense)
