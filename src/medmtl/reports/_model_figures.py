"""Figures that need a trained model: t-SNE of trunk features per stage, and Grad-CAM overlays.

Both use the first arm's reference-seed model on its own test split (rebuilt from the run's config
and split files by :func:`medmtl.reports.predictions.load_split`).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from medmtl.engine.predict import default_device
from medmtl.reports._figures import Figure, _colours, encode, new_figure
from medmtl.reports._layout import CLASSIFICATION

log = logging.getLogger("medmtl.reports")

GRADCAM_CASES = 4


def _trunk_for(model, task: str | None = None):
    """The shared trunk (hard sharing), or the trunk of ``task``'s head (soft sharing; the first
    head's trunk when no task is given)."""
    if model.sharing == "hard":
        return model.trunk
    head = model.head_of[task] if task else next(iter(model.trunks))
    return model.trunks[head]


def _item_labels(dataset, specs: dict, idx: np.ndarray) -> tuple[list[str], list[str], dict[str, tuple]]:
    """For each item: ``task: class`` of the task it was drawn for, that task's domain (or name),
    and a sort key per class label (task order, then class order) for the legend."""
    classes, domains, keys = [], [], {}
    for i in idx:
        ti, _, row = (int(v) for v in dataset.items_[i])
        task = dataset.tasks[ti]
        spec = specs[task]
        domains.append(spec.domain or task)
        value = int(dataset.data.labels[task][row]) if spec.kind in CLASSIFICATION else -1
        if spec.kind in CLASSIFICATION:
            label = f"{task}: {spec.classes[value]}" if value >= 0 else f"{task}: unlabelled"
        else:
            label = f"{task} ({spec.kind})"
        classes.append(label)
        keys[label] = (ti, value)
    return classes, domains, keys


@torch.no_grad()
def pooled_stage_features(trunk, dataset, idx: np.ndarray, batch_size: int, device) -> list[np.ndarray]:
    """Globally average-pooled output of every trunk stage (``forward_pyramid``), one array per stage."""
    trunk = trunk.to(device).eval()
    per_stage: list[list[np.ndarray]] = []
    for start in range(0, len(idx), batch_size):
        x = torch.stack([dataset[int(i)]["image"] for i in idx[start:start + batch_size]]).to(device)
        maps = trunk.forward_pyramid(x)
        if not per_stage:
            per_stage = [[] for _ in maps]
        for k, m in enumerate(maps):
            per_stage[k].append(m.flatten(2).mean(-1).float().cpu().numpy())
    return [np.concatenate(s) for s in per_stage]


def tsne_figures(ref, max_images: int, seed: int = 0) -> list[Figure]:
    """One figure per trunk stage: t-SNE of the pooled features, coloured by class and by task/domain."""
    cfg, model, specs, dataset, arm, run_seed = ref
    n_all = len(dataset)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n_all, size=min(max_images, n_all), replace=False))
    if len(idx) < 5:
        raise ValueError(f"only {len(idx)} test images; t-SNE needs at least 5")
    spec_map = {s.name: s for s in specs}
    classes, domains, keys = _item_labels(dataset, spec_map, idx)
    panels = _tsne_panels(classes, domains, spec_map)
    device = default_device()
    feats = pooled_stage_features(_trunk_for(model), dataset, idx, cfg.data.batch_size, device)
    perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3)))
    figures = []
    for k, f in enumerate(feats):
        # one OpenMP thread: at a few hundred points the Barnes-Hut gradient gains nothing from more,
        # and on a busy 2-core runner spinning threads made it 12x slower (11 s against 0.9 s)
        with threadpool_limits(limits=1, user_api="openmp"):
            emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
                StandardScaler().fit_transform(f))
        fig = new_figure(4.7 * len(panels), 4.2)
        axes = fig.subplots(1, len(panels))
        for ax, (labels, title) in zip(axes, panels):
            names = sorted(dict.fromkeys(labels), key=lambda n: keys.get(n, (0, 0)))
            arr = np.array(labels)
            for name, colour in zip(names, _colours(len(names))):
                sel = arr == name
                ax.scatter(emb[sel, 0], emb[sel, 1], s=9, color=colour, label=name, alpha=0.8, linewidths=0)
            ax.set(title=title, xticks=[], yticks=[])
            if len(names) <= 20:
                ax.legend(fontsize=7, markerscale=1.5, loc="best")
        share = "shared trunk" if model.sharing == "hard" else "first head's trunk (soft sharing)"
        figures.append(Figure(
            "tsne", f"t-SNE, stage {k + 1} of {len(feats)}",
            f"t-SNE of the {share} features after stage {k + 1} of {len(feats)} ({f.shape[1]} channels, global "
            f"average pooled, standardised), arm {arm} seed {run_seed}, {len(idx)} test images "
            f"(seeded sample of {n_all}); perplexity {perplexity:.0f}, random_state {seed}. "
            f"Panels: {'; '.join(t for _, t in panels)}.", encode(fig)))
    return figures


def _tsne_panels(classes: list[str], domains: list[str], specs: dict) -> list[tuple[list[str], str]]:
    """(labels, title) per t-SNE panel: class per task, then by domain when the tasks declare one.

    With several domains a middle panel pools the class names over tasks (malignant vs benign
    whatever the domain, as Samala et al. 2017 figure 5): shared structure across domains shows
    there, domain clusters in the last panel. Domains are the tasks' ``domain`` (else task names).
    """
    by_domain = all(s.domain for s in specs.values())
    panels = [(classes, "coloured by task: class")]
    if len(set(domains)) > 1:
        pooled = [c.split(": ", 1)[1] if ": " in c else c for c in classes]
        if len(set(pooled)) < len(set(classes)):
            panels.append((pooled, "coloured by class (all domains)"))
    panels.append((domains, "coloured by domain" if by_domain else "coloured by task/domain"))
    return panels


def _cam_layer(trunk) -> nn.Module:
    """The module whose output Grad-CAM weighs: the trunk's last stage or, where ``stages()`` wraps
    modules in a new ``nn.Sequential`` that the forward pass never calls (timm trunks: its hooks
    would never fire and the gradients stay None), the last module inside that wrapper."""
    stage = trunk.stages()[-1]
    if any(m is stage for m in trunk.modules()):
        return stage
    return list(stage.children())[-1]


class TaskLogits(nn.Module):
    """The model as Grad-CAM needs it: images in, one task's logits for every row of the batch out."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.model(x)[self.task]   # no label mask: every row goes to every head
        return out


def _display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W, 3) float in [0, 1], min-max per image (for display)."""
    a = image.float().cpu().numpy()
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a[:3]
    a = np.transpose(a, (1, 2, 0))
    lo, hi = a.min(), a.max()
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)


def gradcam_figures(ref, cases: int = GRADCAM_CASES, seed: int = 0) -> list[Figure]:
    """Per classification task: a few test images, the Grad-CAM of the predicted class on the last
    trunk stage, overlaid (``pytorch_grad_cam.GradCAM``)."""
    # lazy: grad-cam takes seconds to import; only this figure needs it
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    _, model, specs, dataset, arm, run_seed = ref
    device = default_device()
    model = model.to(device).eval()
    rng = np.random.default_rng(seed)
    lookup = {(dataset.source_keys_[si], r): i for i, (_, si, r) in enumerate(dataset.items_.tolist())}
    figures = []
    for spec in specs:
        if spec.kind not in CLASSIFICATION:
            continue
        rows = dataset.data.rows(spec.name, dataset.split)
        items = [lookup[(spec.source, int(r))] for r in rows if (spec.source, int(r)) in lookup]
        if not items:
            continue
        chosen = np.sort(rng.choice(items, size=min(cases, len(items)), replace=False))
        x = torch.stack([dataset[int(i)]["image"] for i in chosen]).to(device)
        with torch.no_grad():
            probs = TaskLogits(model, spec.name)(x).softmax(1).cpu().numpy()
        pred = probs.argmax(1)
        target_layer = _cam_layer(_trunk_for(model, spec.name))
        with GradCAM(model=TaskLogits(model, spec.name), target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in pred])
        fig = new_figure(2.2 * len(chosen), 4.6)
        axes = fig.subplots(2, len(chosen), squeeze=False)
        for j, i in enumerate(chosen):
            img = _display(x[j])
            true = int(dataset.data.labels[spec.name][int(dataset.items_[i][2])])
            axes[0, j].imshow(img)
            axes[0, j].set_title(f"true {spec.classes[true]}", fontsize=8)
            axes[1, j].imshow(show_cam_on_image(img, maps[j], use_rgb=True))
            axes[1, j].set_title(f"pred {spec.classes[pred[j]]} ({probs[j, pred[j]]:.2f})", fontsize=8)
            for ax in axes[:, j]:
                ax.set_axis_off()
        figures.append(Figure(
            "gradcam", f"Grad-CAM: {spec.name}",
            f"Grad-CAM (pytorch_grad_cam.GradCAM) of the predicted class of {spec.name} on the last trunk stage, "
            f"arm {arm} seed {run_seed}, {len(chosen)} seeded random test images; top: input (min-max scaled), "
            "bottom: overlay (red = high relevance).", encode(fig)))
    return figures
