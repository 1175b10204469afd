"""Fang et al.'s multi-task head: auxiliary predictions feed the main classifier."""
from __future__ import annotations

import torch
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import CLASSIFICATION_KINDS, check_head_tasks, to_probabilities


def split_main_auxiliary(tasks: list) -> tuple[object, list]:
    """Return ``(main task, auxiliary tasks)``; every task whose role is not ``main`` is auxiliary.

    Raises:
        ValueError: not exactly one main task, or no auxiliary task.
    """
    main = [t for t in tasks if t.role == "main"]
    aux = [t for t in tasks if t.role != "main"]
    if len(main) != 1:
        raise ValueError(f"head 'aux_conditioned' needs exactly one task with role 'main'; got {len(main)} "
                         f"({[t.name for t in main]}) among {[t.name for t in tasks]}; "
                         "set role: auxiliary on the others")
    if not aux:
        raise ValueError(f"head 'aux_conditioned' needs at least one auxiliary task besides {main[0].name!r}; "
                         "use the 'linear' head for a single task")
    return main[0], aux


def _fc(in_features: int, out_features: int, drop_rate: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.ReLU(), nn.Dropout(drop_rate))


@HEADS.register("aux_conditioned", task_types=CLASSIFICATION_KINDS, needs_pyramid=False, multi_task=True)
class AuxConditionedHead(Head):
    """One main task and k >= 1 auxiliary tasks whose predictions condition the main classifier.

    Fang et al. (SPIE Medical Imaging 2019, Fig. 1): the CNN's feature vector FC0 "is connected to
    two separated fully-connected layers (FC1 and FC2). FC1 is directly connected to several groups
    of softmax classifiers" (one per auxiliary task); "the inferred nodes are then concatenated with
    the layer FC2 followed by a softmax classifier" for the main task. So FC1 and FC2 both branch
    from FC0, as in the paper.

    The paper (AlexNet trunk) gives no layer sizes. Defaults chosen here: FC0 is a learned
    layer on the pooled trunk features (AlexNet's fc feature vector has no counterpart in a
    globally pooled trunk), 256 -> FC1 128 / FC2 128, each Linear-ReLU-Dropout(0.5) as in
    AlexNet's fully connected layers.

    The auxiliary "inferred nodes" are probabilities: softmax for binary/multiclass/ordinal tasks,
    sigmoid for multilabel ones. With ``detach_aux=False`` (default; the paper trains end to end
    and says nothing about stopping gradients) the main loss also trains the auxiliary classifiers
    and FC1 through these probabilities; with ``detach_aux=True`` the auxiliary classifiers learn
    from their own labels only and the main task treats their predictions as fixed inputs.

    Task types: binary, multiclass, ordinal, multilabel (main and auxiliary).
    Output: logits (B, num_classes) for every task.

    Args:
        tasks: exactly one task with ``role == "main"``, the others auxiliary.
        in_features: pooled trunk feature size.
        feature_info: unused.
        fc0_features, fc1_features, fc2_features: widths of FC0, FC1 and FC2.
        drop_rate: dropout after each of FC0, FC1 and FC2.
        detach_aux: stop the main loss's gradient at the auxiliary probabilities.

    Raises:
        ValueError: zero or several main tasks, no auxiliary task, or a non-classification task.
    """

    def __init__(self, tasks, in_features: int, feature_info: list[dict], fc0_features: int = 256,
                 fc1_features: int = 128, fc2_features: int = 128, drop_rate: float = 0.5, detach_aux: bool = False):
        super().__init__(tasks, in_features, feature_info)
        self.fc0_features, self.fc1_features, self.fc2_features = fc0_features, fc1_features, fc2_features
        self.drop_rate = drop_rate
        self.detach_aux = detach_aux
        main, aux = split_main_auxiliary(check_head_tasks("aux_conditioned", tasks))
        self.main_task = main.name
        self.aux_kinds = {t.name: t.kind for t in aux}
        self.fc0 = _fc(in_features, fc0_features, drop_rate)
        self.fc1 = _fc(fc0_features, fc1_features, drop_rate)
        self.fc2 = _fc(fc0_features, fc2_features, drop_rate)
        self.aux = nn.ModuleDict({t.name: nn.Linear(fc1_features, t.num_classes) for t in aux})
        self.main = nn.Linear(fc2_features + sum(t.num_classes for t in aux), main.num_classes)

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        h0 = self.fc0(feats.pooled)
        h1, h2 = self.fc1(h0), self.fc2(h0)
        out = {name: clf(h1) for name, clf in self.aux.items()}
        probs = [to_probabilities(self.aux_kinds[name], logits) for name, logits in out.items()]
        if self.detach_aux:
            probs = [p.detach() for p in probs]
        out[self.main_task] = self.main(torch.cat([h2, *probs], dim=1))
        return out
