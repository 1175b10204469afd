"""The multi-task network: routing of labelled rows, hard and soft sharing, building heads from a config."""
from __future__ import annotations

import pytest
import torch

from medmtl.data.pipeline import TaskSpec
from medmtl.models.heads import BoxHead, LinearHead, SegmentationHead
from medmtl.models.multitask import MultiTaskModel, build_heads
from medmtl.models.trunks import TRUNKS
from medmtl.mtl.losses import compute_losses


def spec(name: str, kind: str, n: int = 2, role: str = "main") -> TaskSpec:
    classes = tuple(f"c{i}" for i in range(n)) if kind not in ("segmentation", "detection") else ()
    return TaskSpec(name=name, kind=kind, classes=classes, target=name, source="src", role=role)


def tiny(width: int = 8):
    return TRUNKS.get("test_tiny")(width=width)


def make_model(tasks, sharing="hard", head_cfg=None, **kw) -> MultiTaskModel:
    torch.manual_seed(0)
    trunk = tiny()
    heads = build_heads(tasks, head_cfg, trunk.num_features, trunk.feature_info)
    return MultiTaskModel(trunk, heads, tasks, sharing=sharing, **kw)


def mask(*bits) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


AB = [spec("a", "binary"), spec("b", "multiclass", 3)]


# -- routing (hard sharing) ------------------------------------------------------------------------
def test_a_head_without_labelled_rows_is_not_called_and_gets_no_gradient():
    model = make_model(AB)
    x = torch.randn(6, 3, 32, 32)
    out = model(x, {"a": mask(1, 1, 0, 1, 0, 0), "b": mask(0, 0, 0, 0, 0, 0)})
    assert set(out) == {"a"}
    logits, rows = out["a"]
    assert rows.tolist() == [0, 1, 3] and logits.shape == (3, 2)
    logits.sum().backward()
    assert all(p.grad is None for p in model.heads["b"].parameters())
    assert all(p.grad is not None for p in model.heads["a"].parameters())
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_rows_routed_to_each_head_are_exactly_its_labelled_rows():
    model = make_model(AB)
    m = {"a": mask(1, 0, 1, 0, 0), "b": mask(0, 1, 1, 0, 1)}
    out = model(torch.randn(5, 3, 32, 32), m)
    for task in ("a", "b"):
        assert out[task][1].tolist() == m[task].nonzero().flatten().tolist()
        assert out[task][0].shape[0] == int(m[task].sum())


def test_without_label_mask_every_row_goes_to_every_head():
    model = make_model(AB)
    out = model(torch.randn(4, 3, 32, 32))
    assert {t: r.tolist() for t, (_, r) in out.items()} == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}


def test_routed_outputs_do_not_depend_on_other_tasks_rows_in_eval_mode():
    # In training mode batch norm mixes rows; in eval mode a row's output depends on that row only.
    model = make_model(AB).eval()
    x = torch.randn(4, 3, 32, 32)
    m = {"a": mask(1, 1, 0, 0), "b": mask(0, 0, 1, 1)}
    first = model(x, m)["a"][0]
    x2 = x.clone()
    x2[2:] = torch.randn(2, 3, 32, 32)
    assert torch.allclose(first, model(x2, m)["a"][0])
    assert torch.allclose(first, model(x)["a"][0][:2], atol=1e-6)   # same as the unrouted forward


def test_a_multi_task_head_runs_on_rows_where_any_of_its_tasks_is_labelled_and_returns_each_its_own():
    """The shared head runs once on rows {0, 2}; each task gets back only the rows it labels, the
    same outputs the head computed for them (so no consumer has to filter a shared head's rows)."""
    tasks = [spec("sev", "multiclass", 3), spec("tis", "multiclass", 3, role="auxiliary")]
    model = make_model(tasks, head_cfg={"mias": {"name": "aux_conditioned", "tasks": ["sev", "tis"]}}).eval()
    seen = []
    model.heads["mias"].register_forward_pre_hook(lambda mod, args: seen.append(len(args[0].pooled)))
    x = torch.randn(4, 3, 32, 32)
    out = model(x, {"sev": mask(1, 0, 0, 0), "tis": mask(0, 0, 1, 0)})
    assert seen == [2]
    assert out["sev"][1].tolist() == [0] and out["tis"][1].tolist() == [2]
    both = model(x, {"sev": mask(1, 0, 1, 0), "tis": mask(1, 0, 1, 0)})
    assert torch.allclose(out["sev"][0], both["sev"][0][:1]) and torch.allclose(out["tis"][0], both["tis"][0][1:])
    assert set(model(x, {"sev": mask(0, 0, 0, 0), "tis": mask(0, 1, 0, 0)})) == {"tis"}


def test_the_pyramid_is_computed_only_when_a_routed_head_needs_it(monkeypatch):
    model = make_model([spec("a", "binary"), spec("seg", "segmentation")])
    given, calls = [], []
    model.heads["a"].register_forward_pre_hook(lambda mod, args: given.append(args[0].pyramid is not None))
    original = model.trunk.forward
    monkeypatch.setattr(model.trunk, "forward", lambda x: calls.append(len(x)) or original(x))
    x = torch.randn(3, 3, 32, 32)
    model(x, {"a": mask(1, 1, 1), "seg": mask(0, 0, 0)})
    assert given == [False] and calls == [3]        # pooled features only
    out = model(x, {"a": mask(1, 1, 1), "seg": mask(0, 1, 0)})
    assert given == [False, True] and calls == [3]  # one pyramid pass serves both heads
    assert out["seg"][0].shape == (1, 1, 32, 32)


def test_label_mask_of_the_wrong_shape_is_refused():
    model = make_model(AB)
    with pytest.raises(ValueError, match=r"label_mask\['a'\] must have shape \(4,\) for a batch of 4; got \(3,\)"):
        model(torch.randn(4, 3, 32, 32), {"a": mask(1, 0, 1)})


def test_parameter_groups_partition_the_model():
    for sharing in ("hard", "soft"):
        model = make_model(AB, sharing=sharing)
        trunk = {id(p) for p in model.trunk_parameters()}
        heads = {id(p) for p in model.head_parameters()}
        assert trunk and heads and not trunk & heads
        assert trunk | heads == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("sharing", ["hard", "soft"])
def test_predict_gives_probabilities_per_kind_and_restores_the_mode(sharing):
    tasks = [spec("a", "multiclass", 3), spec("ml", "multilabel", 4), spec("seg", "segmentation"),
             spec("det", "detection")]
    model = make_model(tasks, sharing=sharing).train()
    p = model.predict(torch.randn(2, 3, 32, 32))
    assert model.training
    assert torch.allclose(p["a"].sum(1), torch.ones(2))
    assert p["ml"].shape == (2, 4) and ((p["ml"] > 0) & (p["ml"] < 1)).all()
    assert p["seg"].shape == (2, 1, 32, 32) and ((p["seg"] >= 0) & (p["seg"] <= 1)).all()
    det = p["det"]
    assert ((det >= 0) & (det <= 1)).all() and (det[:, 2] >= det[:, 0]).all() and (det[:, 3] >= det[:, 1]).all()


def test_model_refuses_bad_sharing_and_uncovered_tasks():
    trunk = tiny()
    heads = build_heads(AB[:1], None, trunk.num_features, trunk.feature_info)
    with pytest.raises(ValueError, match=r"tasks \['b'\] have no head"):
        MultiTaskModel(trunk, heads, AB)
    with pytest.raises(ValueError, match=r"sharing='medium' is not supported; choose one of \['hard', 'soft'\]"):
        MultiTaskModel(trunk, heads, AB[:1], sharing="medium")


# -- soft sharing ----------------------------------------------------------------------------------
def test_soft_penalty_is_zero_for_copies_and_hard_sharing_has_none():
    assert make_model(AB, sharing="soft").sharing_penalty().item() == 0.0
    assert make_model(AB).sharing_penalty().item() == 0.0


def test_soft_penalty_is_the_weighted_pairwise_squared_distance():
    tasks = AB + [spec("c", "binary")]
    model = make_model(tasks, sharing="soft", soft_weight=0.5)
    with torch.no_grad():
        for t in ("b", "c"):
            for p in model.trunks[t].parameters():
                p.add_(torch.randn_like(p) * 0.1)
    params = [torch.cat([p.flatten() for p in model.trunks[t].parameters()]) for t in ("a", "b", "c")]
    pairwise = sum(((params[i] - params[j]) ** 2).sum() for i in range(3) for j in range(i + 1, 3))
    penalty = model.sharing_penalty()
    assert penalty.item() > 0
    assert torch.allclose(penalty, 0.5 * pairwise)


def test_one_sgd_step_on_the_penalty_pulls_the_trunks_together():
    model = make_model(AB, sharing="soft", soft_weight=1.0)
    with torch.no_grad():
        for p in model.trunks["b"].parameters():
            p.add_(torch.randn_like(p))
    before = model.sharing_penalty()
    opt = torch.optim.SGD(model.trunk_parameters(), lr=0.1)
    before.backward()
    opt.step()
    assert model.sharing_penalty().item() < 0.5 * before.item()


def test_soft_sharing_sends_each_tasks_rows_through_its_own_trunk_only():
    model = make_model(AB, sharing="soft").eval()
    seen = {}
    for t, trunk in model.trunks.items():
        trunk.register_forward_hook(lambda mod, inp, out, t=t: seen.setdefault(t, []).append(len(inp[0])))
    x = torch.randn(5, 3, 32, 32)
    m = {"a": mask(1, 1, 0, 0, 0), "b": mask(0, 0, 1, 1, 1)}
    out = model(x, m)
    assert seen == {"a": [2], "b": [3]}
    expected = model.heads["a"].fc["a"](model.trunks["a"](x[:2]))
    assert torch.allclose(out["a"][0], expected)
    with torch.no_grad():                                  # b's trunk cannot reach a's outputs
        for p in model.trunks["b"].parameters():
            p.mul_(3.0)
    assert torch.allclose(model(x, m)["a"][0], out["a"][0])


def test_trunk_factory_builds_the_soft_trunks_and_must_give_one_architecture():
    widths = iter([8, 8])
    model = MultiTaskModel(None, build_heads(AB, None, 16, tiny().feature_info), AB, sharing="soft",
                           trunk_factory=lambda: tiny(next(widths)))
    assert model.trunks["a"] is not model.trunks["b"]
    assert model.sharing_penalty().item() > 0       # independently initialised trunks differ
    widths = iter([8, 4])
    with pytest.raises(ValueError, match="needs trunks with corresponding parameters; the trunk of head 'b'"):
        MultiTaskModel(None, build_heads(AB, None, 16, tiny().feature_info), AB, sharing="soft",
                       trunk_factory=lambda: tiny(next(widths)))


# -- build_heads -----------------------------------------------------------------------------------
MIXED = [spec("sev", "multiclass", 3), spec("tis", "multiclass", 3, role="auxiliary"),
         spec("abn", "multiclass", 7, role="auxiliary"), spec("seg", "segmentation"), spec("det", "detection")]


def build(cfg, tasks=MIXED):
    trunk = tiny()
    return build_heads(tasks, cfg, trunk.num_features, trunk.feature_info)


def test_default_heads_per_kind():
    heads = build(None)
    assert list(heads) == ["sev", "tis", "abn", "seg", "det"]
    assert [type(h) for h in heads.values()] == [LinearHead, LinearHead, LinearHead, SegmentationHead, BoxHead]


def test_a_head_config_groups_tasks_and_passes_hyper_parameters():
    heads = build({"mias": {"name": "aux_conditioned", "tasks": ["sev", "tis", "abn"], "fc0_features": 32},
                   "seg": {"name": "segmentation", "kwargs": {"decoder_channels": [4]}}})
    assert list(heads) == ["mias", "seg", "det"]
    assert heads["mias"].task_names == ["sev", "tis", "abn"] and heads["mias"].fc0_features == 32
    assert heads["seg"].decoder_channels == [4]


def test_build_heads_refuses_unknown_heads_wrong_kinds_and_double_claims():
    with pytest.raises(KeyError, match=r"'nope' is not a registered head; choose one of \['aux_conditioned', 'box'"):
        build({"sev": {"name": "nope"}})
    with pytest.raises(ValueError, match="task 'seg' has kind 'segmentation', which head 'linear' does not support"):
        build({"seg": {"name": "linear"}})
    with pytest.raises(ValueError, match="heads.x.tasks: task 'sev' already has head 'sev'"):
        build({"sev": {"name": "linear"}, "x": {"name": "linear", "tasks": ["sev"]}})
    with pytest.raises(ValueError, match=r"heads.x.tasks: 'zzz' is not a task of this model; choose from \['abn'"):
        build({"x": {"name": "linear", "tasks": ["zzz"]}})
    with pytest.raises(ValueError, match=r"heads.se: no 'tasks' given, so the key must name a task.*'sev'"):
        build({"se": {"name": "linear"}})


# -- real data -------------------------------------------------------------------------------------
def test_a_busi_batch_gives_finite_per_sample_losses(shared_data):
    from medmtl.data.dataset import MultiTaskDataset, collate

    names = ["busi_cls", "busi_seg", "busi_det"]
    ds = MultiTaskDataset(shared_data, "train", names, size=64)
    batch = collate([ds[i] for i in range(16)])
    specs = [shared_data.tasks[t] for t in names]
    model = make_model(specs)
    out = model(batch["image"], batch["label_mask"])
    losses = compute_losses(specs, out, batch)
    assert set(losses) == set(names)
    for t in names:
        assert len(losses[t]) == int(batch["label_mask"][t].sum()) > 0
        assert torch.isfinite(losses[t]).all() and (losses[t] >= 0).all()
    sum(v.mean() for v in losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_scores_of_a_shared_head_keep_only_each_tasks_labelled_rows():
    """A head serving several tasks runs on every row any of them labels; validation and test
    scores of one task must still hold only the rows that task labels (never a missing label)."""
    from medmtl.config.schema import HeadConfig
    from medmtl.engine.validate import predict_split
    from medmtl.evaluation.predictions import split_scores

    tasks = [spec("main", "binary"), spec("aux", "multiclass", 3, role="auxiliary")]
    model = make_model(tasks, head_cfg={"fang": HeadConfig(name="aux_conditioned", tasks=["main", "aux"])})
    batch = {"image": torch.randn(6, 3, 32, 32), "index": torch.arange(6),
             "label_mask": {"main": mask(1, 0, 1, 0, 1, 0), "aux": mask(1, 1, 1, 1, 1, 1)},
             "labels": {"main": torch.tensor([0, -1, 1, -1, 0, -1]), "aux": torch.tensor([0, 1, 2, 0, 1, 2])}}
    out = predict_split(model, [batch], {t.name: t for t in tasks}, "cpu")
    assert out["main"]["index"].tolist() == [0, 2, 4] and out["main"]["y"].tolist() == [0, 1, 0]
    assert out["aux"]["index"].tolist() == list(range(6))

    class OneBatch(torch.utils.data.Dataset):   # split_scores builds its own loader
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"image": batch["image"][i], "index": i,
                    "label_mask": {t: bool(m[i]) for t, m in batch["label_mask"].items()},
                    "labels": {t: int(v[i]) for t, v in batch["labels"].items()}}

    scores = split_scores(model, OneBatch(), ["main"], {t.name: t for t in tasks})
    assert scores["main"]["item"].tolist() == [0, 2, 4] and (scores["main"]["y"] >= 0).all()


def test_an_unknown_head_option_names_its_key_and_the_accepted_options():
    from medmtl.errors import ConfigError

    trunk = tiny()
    with pytest.raises(ConfigError, match=r"heads\.a\.kwargs: 'hiden' is not an option; it accepts "
                                          r"\['hidden_features', 'drop_rate'"):
        build_heads([spec("a", "binary")], {"a": {"name": "transfer", "hiden": 3}}, trunk.num_features,
                    trunk.feature_info)
