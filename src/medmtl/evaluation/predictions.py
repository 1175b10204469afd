"""Scores of a trained model on one split, as rows of ``results/predictions.csv``.

Test-time augmentation averages the scores over the 8 flips and 90-degree rotations of each
image (the dihedral group): a lesion has no preferred orientation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from medmtl.engine.validate import _scores

CLASSIFICATION = ("binary", "multiclass", "ordinal")


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a (B, C, H, W) batch."""
    out = []
    for flip in (False, True):
        y = torch.flip(x, dims=(-1,)) if flip else x
        out.extend(torch.rot90(y, k, dims=(-2, -1)) for k in range(4))
    return out


@torch.no_grad()
def split_scores(model, dataset, tasks: list[str], specs: dict, *, tta: bool = False, batch_size: int = 128):
    """``{task: {"y", "p", "item"}}`` for the classification tasks among ``tasks`` on ``dataset``."""
    from medmtl.data.dataset import collate

    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = {t: {"y": [], "p": [], "item": []} for t in tasks if specs[t].kind in CLASSIFICATION}
    for batch in loader:
        mask = batch["label_mask"]
        views = dihedral(batch["image"]) if tta else [batch["image"]]
        summed: dict[str, torch.Tensor] = {}
        rows_of: dict[str, torch.Tensor] = {}
        for view in views:
            for task, (output, rows) in model(view, label_mask=mask).items():
                if task in out:
                    p = _scores(specs[task].kind, output.float())
                    summed[task] = summed.get(task, 0) + p
                    rows_of[task] = rows
        for task, total in summed.items():
            rows = rows_of[task]
            out[task]["p"].append((total / len(views)).numpy())
            out[task]["y"].append(batch["labels"][task][rows].numpy())
            out[task]["item"].append(batch["index"][rows].numpy())
    return {t: {k: np.concatenate(v) if v else np.zeros(0) for k, v in d.items()} for t, d in out.items()}


def prediction_rows(scores: dict, dataset, data, specs: dict, *, arm: str, seed: int, split: str) -> pd.DataFrame:
    """Rows of the results layout (arm, seed, task, split, id, group, y_true, score_<class>)."""
    frames = []
    for task, d in scores.items():
        if len(d["y"]) == 0:
            continue
        items = dataset.items_[d["item"].astype(int)]
        src_keys = [dataset.source_keys_[int(s)] for s in items[:, 1]]
        ids = [data.sources[k].cached.records[int(r)].id for k, r in zip(src_keys, items[:, 2])]
        groups = [str(data.sources[k].groups[int(r)]) for k, r in zip(src_keys, items[:, 2])]
        frame = pd.DataFrame({"arm": arm, "seed": seed, "task": task, "split": split, "id": ids, "group": groups,
                              "y_true": d["y"].astype(int)})
        for k, c in enumerate(specs[task].classes):
            frame[f"score_{c}"] = d["p"][:, k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
