"""One dataset over all tasks: batches mix tasks at the sample level.

Each item is one image (read from the decode cache's memory map, never from its file). It carries
the index of the task it was drawn for (``task``: the first listed task labelling it, which the
samplers balance over), a label for *every* task and a per-task ``label_mask``. An image shared by
several tasks (a BUSI image: class, mask and box) appears once and feeds each of their heads; a
missing label is masked, never imputed.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from medmtl.data.pipeline import PreparedData
from medmtl.data.transforms import build_transform

MISSING = -1


def main_box(boxes: np.ndarray | None) -> np.ndarray:
    """The largest box of an image, (4,), or zeros: the box head predicts one lesion per image."""
    if boxes is None or len(boxes) == 0:
        return np.zeros(4, np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[int(np.argmax(area))].astype(np.float32)


class MultiTaskDataset(Dataset):
    """Images of ``split`` for ``tasks``, transformed with a registered augmentation preset.

    Args:
        data: the prepared data of an experiment.
        split: ``train``, ``val`` or ``test``; training rows exclude leakage-guarded copies.
        tasks: task names in head order (default: all tasks of ``data``).
        preset: augmentation preset name (``s0``, ``s2``, ``none``).
        train: apply the preset's random steps.
        size: output side in pixels (default: the largest cached size among the tasks).
        in_chans: 1 or 3 channels out.
    """

    def __init__(self, data: PreparedData, split: str, tasks: list[str] | None = None, preset: str = "none",
                 train: bool = False, size: int | None = None, in_chans: int = 3):
        self.data = data
        self.split = split
        self.tasks = list(tasks or data.tasks)
        self.preset = preset
        self.train = train
        self.size = size
        self.in_chans = in_chans
        unknown = [t for t in self.tasks if t not in data.tasks]
        if unknown:
            raise KeyError(f"tasks {unknown} are not in the prepared data; it has {sorted(data.tasks)}")
        self.items_ = self._index()
        out_size = size or max(data.source_of(t).cached.store.shape[1] for t in self.tasks)
        self.transform_ = build_transform(preset, train=train, size=out_size, in_chans=in_chans)
        self.out_size_ = out_size

    def _index(self) -> np.ndarray:
        """(n, 3) int rows of (task index, source number, row), one per distinct image."""
        seen: set[tuple[str, int]] = set()
        items = []
        self.source_keys_ = list(dict.fromkeys(self.data.tasks[t].source for t in self.tasks))
        for ti, task in enumerate(self.tasks):
            key = self.data.tasks[task].source
            for row in self.data.rows(task, self.split):
                if (key, int(row)) not in seen:
                    seen.add((key, int(row)))
                    items.append((ti, self.source_keys_.index(key), int(row)))
        return np.array(items, dtype=np.int64).reshape(-1, 3)

    @property
    def task_ids(self) -> np.ndarray:
        """Task index of every item: what the samplers balance over."""
        return self.items_[:, 0]

    def __len__(self) -> int:
        return len(self.items_)

    def __getitem__(self, i: int) -> dict:
        ti, si, row = (int(v) for v in self.items_[i])
        key = self.source_keys_[si]
        src = self.data.sources[key]
        cached = src.cached
        image = np.asarray(cached.image(row))
        mask = cached.mask(row)
        box = None
        if cached.records[row].boxes is not None:
            w, h = cached.native_size[row]
            s = image.shape[0]
            box = main_box(cached.records[row].boxes)[None] * np.array([s / w, s / h, s / w, s / h], np.float32)
        out = _single_threaded(self.transform_, image, None if mask is None else np.asarray(mask), box)
        labels, present = {}, {}
        for task in self.tasks:
            labels[task], present[task] = self._label(task, key, row, out)
        return {"image": out["image"], "task": ti, "index": i, "labels": labels, "label_mask": present}

    def _label(self, task: str, key: str, row: int, out: dict):
        spec = self.data.tasks[task]
        here = spec.source == key
        value = self.data.labels[task][row] if here else None
        if spec.kind == "segmentation":
            ok = here and value == 1 and out["mask"] is not None
            return (out["mask"] if ok else torch.zeros(self.out_size_, self.out_size_, dtype=torch.long)), ok
        if spec.kind == "detection":
            ok = here and value == 1
            boxes = out["boxes"] if (ok and out["boxes"] is not None) else torch.zeros(1, 4)
            has_lesion = ok and len(self.data.source_of(task).cached.records[row].boxes) > 0
            return {"box": boxes[0], "objectness": torch.tensor(float(has_lesion))}, ok
        if spec.kind == "multilabel":
            vec = value if here else np.full(spec.num_classes, np.nan, np.float32)
            ok = bool(here and not np.isnan(vec).all())
            return torch.as_tensor(np.nan_to_num(vec, nan=0.0), dtype=torch.float32), ok
        ok = bool(here and value >= 0)
        return torch.tensor(int(value) if ok else MISSING), ok


def _single_threaded(fn, *args):
    """Run a per-image transform on one intra-op thread.

    Per-image tensors are tiny: a thread pool costs more than it saves, and on a loaded machine
    its spinning threads made a 28 px augmentation 20x slower (12 ms instead of 0.5 ms here).
    DataLoader workers already run single-threaded; this covers ``num_workers=0``.
    """
    n = torch.get_num_threads()
    if n == 1:
        return fn(*args)
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(n)


def collate(batch: list[dict]) -> dict:
    """Stack items; ``label_mask`` becomes a bool tensor per task."""
    return torch.utils.data.default_collate(batch)
