"""Multi-task weightings: a conformance suite over the whole registry, then each method's own claims.

Gradient-based weightings whose TorchJD solver needs an optional extra (upgrad: quadprog; cagrad,
nashmtl: cvxpy) are skipped with the ImportError that names the extra when it is not installed.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from medmtl.data.pipeline import TaskSpec
from medmtl.mtl.weightings import WEIGHTINGS, JacobianWeighting, Weighting, WeightingInfo, _jacobian, create_weighting

EXPECTED_NAMES = {"mean", "equal", "fixed", "main_aux", "spearman", "uncertainty", "dwa", "rlw",
                  "upgrad", "pcgrad", "cagrad", "nashmtl", "mgda"}
FLAGS = {"needs_per_task_grads", "stateful", "needs_labels", "has_parameters", "extra"}
ALL = WEIGHTINGS.list()
JACOBIAN = [n for n in ALL if WEIGHTINGS.meta(n).needs_per_task_grads]
STATEFUL = [n for n in ALL if WEIGHTINGS.meta(n).stateful]


def spec(name: str, role: str = "main", loss_weight: float = 1.0) -> TaskSpec:
    return TaskSpec(name=name, kind="binary", classes=("0", "1"), target=name, source="toy", role=role,
                    loss_weight=loss_weight)


TASKS = [spec("main", "main", loss_weight=1.0), spec("aux", "auxiliary", loss_weight=0.5)]


def toy_labels() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    main = rng.integers(0, 2, 60)
    aux = main.copy()
    aux[:6] = 1 - aux[:6]          # 90% agreement: clearly significant
    main[-3:] = -1                 # missing labels must be ignored, not counted as a class
    return {"main": main, "aux": aux}


def build(name: str, tasks=TASKS, labels=None, **kwargs) -> Weighting:
    w = create_weighting(name, **kwargs)
    try:
        return w.setup(tasks, toy_labels() if labels is None else labels)
    except ImportError as exc:
        pytest.skip(str(exc))


class Toy(nn.Module):
    """A shared linear layer and one linear head per task."""

    def __init__(self, tasks=("main", "aux"), seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.shared = nn.Linear(3, 4)
            self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in tasks})

    def forward(self, x):
        f = torch.tanh(self.shared(x))
        return f, {t: h(f).squeeze(-1) for t, h in self.heads.items()}


def toy_step_losses(model: Toy, step: int = 0):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 3, generator=g)
    y = {t: torch.randn(8, generator=g) * (i + 1) for i, t in enumerate(model.heads)}
    f, out = model(x)
    return f, {t: ((out[t] - y[t]) ** 2).mean() for t in out}


def run_step(w: Weighting, model: Toy, step: int, opt=None) -> dict[str, float]:
    """One training step of the weighting on the toy model (the model itself is not updated)."""
    model.zero_grad(set_to_none=True)
    _, losses = toy_step_losses(model, step)
    if WEIGHTINGS.meta(w_name(w)).needs_per_task_grads:
        weights = w.backward(losses, list(model.shared.parameters()))
    else:
        total, weights = w(losses, counts={t: 8 for t in losses})
        if opt is not None:
            opt.zero_grad()
            total.backward()
            opt.step()
    w.epoch_end(step, {t: float(v.detach()) for t, v in losses.items()})
    return weights


def w_name(w: Weighting) -> str:
    return next(n for n in ALL if WEIGHTINGS.get(n) is type(w))


# -- conformance over the registry ---------------------------------------------------------------
def test_registry_is_pinned():
    assert len(WEIGHTINGS) > 0
    assert set(ALL) == EXPECTED_NAMES
    assert set(JACOBIAN) == {"upgrad", "pcgrad", "cagrad", "nashmtl", "mgda"}
    assert set(STATEFUL) == {"uncertainty", "dwa", "rlw", "nashmtl"}


@pytest.mark.parametrize("name", ALL)
def test_metadata_matches_the_class(name):
    meta = WEIGHTINGS.meta(name)
    cls = WEIGHTINGS.get(name)
    assert isinstance(meta, WeightingInfo) and FLAGS <= {f.name for f in dataclasses.fields(meta)}
    assert meta.needs_per_task_grads == issubclass(cls, JacobianWeighting)
    assert meta.needs_labels == (name == "spearman")
    w = build(name)
    assert meta.has_parameters == any(True for _ in w.parameters())


@pytest.mark.parametrize("name", ALL)
def test_init_only_stores_its_arguments(name):
    cls = WEIGHTINGS.get(name)
    w = cls()
    params = [p.name for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
    assert list(w.get_params()) == params
    public = {k for k in vars(w) if not k.startswith("_")} - {"training"}
    assert public == set(params)
    assert not any(k.endswith("_") for k in vars(w) if not k.startswith("_"))


@pytest.mark.parametrize("name", ALL)
def test_weights_are_finite_non_negative_one_per_task(name):
    w = build(name)
    weights = run_step(w, Toy(), 0)
    assert set(weights) == {"main", "aux"}
    assert all(math.isfinite(v) and v >= 0 for v in weights.values()), weights


@pytest.mark.parametrize("name", ALL)
def test_gradient_reaches_the_shared_layer(name):
    w, model = build(name), Toy()
    model.zero_grad(set_to_none=True)
    _, losses = toy_step_losses(model)
    if name in JACOBIAN:
        w.backward(losses, list(model.shared.parameters()))
    else:
        total, _ = w(losses, counts={"main": 8, "aux": 8})
        total.backward()
    grad = model.shared.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for head in model.heads.values():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


# Nash-MTL re-solves to the same optimum from any warm start; reusing alpha between solves is
# what makes its state matter.
ROUND_TRIP_KWARGS = {"nashmtl": {"update_weights_every": 2}}


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_gives_identical_next_weights(name):
    model = Toy()
    kwargs = ROUND_TRIP_KWARGS.get(name, {})
    w1 = build(name, **kwargs)
    opt1 = torch.optim.SGD(w1.parameters(), lr=0.5) if WEIGHTINGS.meta(name).has_parameters else None
    for step in range(3):
        run_step(w1, model, step, opt1)
    buffer = io.BytesIO()
    torch.save(w1.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)   # what the engine's checkpoints accept

    w2 = build(name, **kwargs)
    w2.load_state_dict(state)
    fresh = build(name, **kwargs)
    opt2 = torch.optim.SGD(w2.parameters(), lr=0.5) if opt1 else None
    opt3 = torch.optim.SGD(fresh.parameters(), lr=0.5) if opt1 else None
    with torch.random.fork_rng():   # pcgrad-like aggregators may draw from the global RNG
        torch.manual_seed(0)
        expected = run_step(w1, model, 3, opt1)
        torch.manual_seed(0)
        resumed = run_step(w2, model, 3, opt2)
        torch.manual_seed(0)
        restarted = run_step(fresh, model, 3, opt3)
    assert resumed == expected
    assert restarted != expected, "the state must matter, or this test could not fail"


def test_create_weighting_refuses_unknown_names_and_hyper_parameters():
    with pytest.raises(KeyError, match="not a registered weighting.*did you mean 'mean'"):
        create_weighting("maen")
    with pytest.raises(ValueError, match=r"'dwa' has no hyper-parameter 't'.*\['T'\]"):
        create_weighting("dwa", t=2.0)


def test_weighting_must_be_set_up_and_losses_must_match_the_tasks():
    w = create_weighting("equal")
    with pytest.raises(RuntimeError, match="not set up; call .setup"):
        w({"main": torch.tensor(1.0)})
    w.setup(TASKS)
    with pytest.raises(ValueError, match=r"tasks \['mian'\].*did you mean 'main'"):
        w({"mian": torch.tensor(1.0)})
    with pytest.raises(ValueError, match=r"losses\['main'\] must be a scalar tensor"):
        w({"main": torch.ones(3)})


def test_missing_optional_dependency_names_the_pip_extra(monkeypatch):
    real = _jacobian.import_module

    def without_quadprog(module, *args):
        if module == "quadprog":
            raise ImportError("No module named 'quadprog'")
        return real(module, *args)

    monkeypatch.setattr(_jacobian, "import_module", without_quadprog)
    with pytest.raises(ImportError, match=r'pip install "torchjd\[quadprog_projector\]"'):
        create_weighting("upgrad").setup(TASKS)


# -- loss-based weightings ---------------------------------------------------------------------
def test_mean_is_the_per_sample_average_for_unequal_counts():
    a = torch.tensor([0.2, 1.0, 3.0])
    b = torch.tensor([0.5, 0.5, 2.0, 4.0, 1.5])
    w = build("mean", tasks=[spec("a"), spec("b", "auxiliary"), spec("c", "auxiliary")])
    # "c" has no sample in this batch: its mean is NaN and must not leak into the total.
    total, weights = w({"a": a.mean(), "b": b.mean(), "c": torch.tensor(float("nan"))},
                       counts={"a": 3, "b": 5, "c": 0})
    assert torch.allclose(total, torch.cat([a, b]).mean())
    assert weights == {"a": 3 / 8, "b": 5 / 8, "c": 0.0}
    with pytest.raises(ValueError, match="needs counts="):
        w({"a": a.mean()})


def test_equal_sums_the_losses():
    total, weights = build("equal")({"main": torch.tensor(2.0), "aux": torch.tensor(3.0)})
    assert float(total) == 5.0 and weights == {"main": 1.0, "aux": 1.0}


def test_fixed_uses_loss_weight_unless_overridden():
    losses = {"main": torch.tensor(2.0), "aux": torch.tensor(3.0)}
    total, weights = build("fixed")(losses)
    assert float(total) == pytest.approx(1.0 * 2.0 + 0.5 * 3.0) and weights == {"main": 1.0, "aux": 0.5}
    total, _ = build("fixed", weights={"main": 3.0})(losses)
    assert float(total) == pytest.approx(3.0 * 2.0 + 0.5 * 3.0)
    with pytest.raises(ValueError, match=r"names \['aux2'\], which are not among the tasks"):
        build("fixed", weights={"aux2": 1.0})


def test_main_aux_formula_with_m_07():
    tasks = [spec("main"), spec("aux1", "auxiliary"), spec("aux2", "auxiliary")]
    losses = {"main": torch.tensor(1.0), "aux1": torch.tensor(2.0), "aux2": torch.tensor(4.0)}
    total, weights = build("main_aux", tasks=tasks)(losses)
    assert float(total) == pytest.approx(0.7 * 1.0 + 0.3 * (2.0 + 4.0) / 2)
    assert weights == pytest.approx({"main": 0.7, "aux1": 0.15, "aux2": 0.15})
    total, _ = build("main_aux", tasks=tasks, aux_weights={"aux1": 0.5, "aux2": 0.25})(losses)
    assert float(total) == pytest.approx(0.7 * 1.0 + 0.3 * (0.5 * 2.0 + 0.25 * 4.0))
    with pytest.raises(ValueError, match=r"no weight for auxiliary tasks \['aux2'\]"):
        build("main_aux", tasks=tasks, aux_weights={"aux1": 0.5})
    with pytest.raises(ValueError, match="exactly one task with role 'main'"):
        build("main_aux", tasks=[spec("main"), spec("other")])
    with pytest.raises(ValueError, match=r"m=1.5 .* must lie in \[0, 1\]"):
        build("main_aux", tasks=tasks, m=1.5)


def test_uncertainty_log_variance_moves_as_its_gradient_predicts():
    w = build("uncertainty")
    opt = torch.optim.SGD(w.parameters(), lr=0.1)
    total, weights = w({"main": torch.tensor(5.0), "aux": torch.tensor(0.1)})
    assert weights == {"main": 1.0, "aux": 1.0} and float(total.detach()) == pytest.approx(5.1)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - L exp(-s) = 1 - L at s = 0
    assert w.log_vars_.grad.tolist() == pytest.approx([1 - 5.0, 1 - 0.1])
    opt.step()
    s_main, s_aux = w.log_vars_.tolist()
    assert s_main > 0 > s_aux          # the larger loss raises its log-variance, i.e. lowers its weight
    _, weights = w({"main": torch.tensor(5.0), "aux": torch.tensor(0.1)})
    assert weights["main"] < 1.0 < weights["aux"]


def test_dwa_raises_the_weight_of_the_task_whose_loss_fell_slower():
    w = build("dwa", T=2.0)
    losses = {"main": torch.tensor(1.0), "aux": torch.tensor(1.0)}
    w.epoch_end(0, {"main": 1.0, "aux": 1.0})
    assert w(losses)[1] == {"main": 1.0, "aux": 1.0}          # first two epochs: equal weights
    w.epoch_end(1, {"main": 0.5, "aux": 0.9})                   # aux fell slower
    _, weights = w(losses)
    expected = 2 * torch.softmax(torch.tensor([0.5, 0.9], dtype=torch.float64) / 2.0, 0)
    assert [weights["main"], weights["aux"]] == pytest.approx(expected.tolist())
    assert weights["aux"] > weights["main"]
    assert sum(weights.values()) == pytest.approx(2.0)
    w.epoch_end(2, {"main": 0.25, "aux": math.nan})             # aux unseen: neutral ratio 1
    assert sum(w(losses)[1].values()) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="epoch_end\\(epoch=2\\) after epoch 2"):
        w.epoch_end(2, {"main": 0.2, "aux": 0.2})
    with pytest.raises(ValueError, match=r"lacks tasks \['aux'\]"):
        w.epoch_end(3, {"main": 0.2})


def test_rlw_draws_softmax_normal_weights_from_its_own_generator():
    before = torch.get_rng_state()
    w = build("rlw", seed=3)
    losses = {"main": torch.tensor(1.0), "aux": torch.tensor(2.0)}
    draws = [w(losses)[1] for _ in range(3)]
    assert torch.equal(torch.get_rng_state(), before)          # the global RNG is left alone
    assert all(sum(d.values()) == pytest.approx(1.0) for d in draws)
    assert draws[0] != draws[1]
    g = torch.Generator().manual_seed(3)
    assert list(draws[0].values()) == pytest.approx(torch.softmax(torch.randn(2, generator=g, dtype=torch.float64), 0).tolist())
    assert [build("rlw", seed=3)(losses)[1] for _ in range(1)][0] == draws[0]


# -- spearman (Fang et al.) ------------------------------------------------------------------
def test_spearman_on_mini_mias(shared_data, caplog):
    """Main task: severity as labelled (normal < benign < malignant is an ordinal scale)."""
    sev = "mias_severity"
    src = shared_data.source_of(sev)
    assert shared_data.source_of("mias_tissue") is src and shared_data.source_of("mias_abnormality") is src
    rows = shared_data.rows(sev, "train")
    labels = {t: shared_data.labels[t][rows] for t in (sev, "mias_tissue", "mias_abnormality")}
    abn = labels["mias_abnormality"]
    labels["abnormal_vs_norm"] = np.where(abn >= 0, (abn != 0).astype(np.int64), -1)   # class 0 is NORM
    labels["shuffled"] = np.random.default_rng(0).permutation(labels[sev])
    tasks = [shared_data.tasks[t] for t in (sev, "mias_tissue", "mias_abnormality")]
    tasks += [spec("abnormal_vs_norm", "auxiliary"), spec("shuffled", "auxiliary")]
    assert shared_data.tasks[sev].role == "main" and len(rows) > 100

    with caplog.at_level(logging.INFO, logger="medmtl.mtl"):
        w = create_weighting("spearman").setup(tasks, labels)
    rep = w.report_
    # A seeded permutation carries no information about severity: dropped, and the log says why.
    assert not rep["shuffled"]["kept"] and rep["shuffled"]["p"] >= 0.05
    assert "'shuffled' dropped (weight 0): Spearman r=" in caplog.text
    assert f"p={rep['shuffled']['p']:.3g} >= alpha=0.05" in caplog.text
    # Abnormal-vs-NORM is (almost) the same question as severity > normal: kept with a large weight.
    assert rep["abnormal_vs_norm"]["kept"] and rep["abnormal_vs_norm"]["r"] > 0.5
    assert rep["abnormal_vs_norm"]["p"] < 1e-10
    # Breast density (fatty/glandular/dense) does not predict severity on these training films.
    assert not rep["mias_tissue"]["kept"] and rep["mias_tissue"]["p"] >= 0.05
    assert rep["mias_abnormality"]["kept"]
    weights = w.task_weights()
    assert weights[sev] == 0.7
    assert weights["abnormal_vs_norm"] == pytest.approx(0.3 * abs(rep["abnormal_vs_norm"]["r"]))
    assert weights["shuffled"] == 0.0 and weights["mias_tissue"] == 0.0
    print({t: (round(r["r"], 3), float(f"{r['p']:.3g}"), r["n"], r["kept"]) for t, r in rep.items()})


def test_spearman_uses_the_absolute_correlation():
    labels = toy_labels()
    labels["aux"] = np.where(labels["aux"] >= 0, 1 - labels["aux"], -1)    # same information, reversed classes
    w = build("spearman", labels=labels)
    assert w.report_["aux"]["r"] < -0.5 and w.report_["aux"]["kept"]
    assert w.task_weights()["aux"] == pytest.approx(0.3 * -w.report_["aux"]["r"])


def test_spearman_without_a_surviving_auxiliary_trains_the_main_task_alone(caplog):
    labels = toy_labels()
    labels["aux"] = np.random.default_rng(1).permutation(labels["aux"])
    with caplog.at_level(logging.WARNING, logger="medmtl.mtl"):
        w = build("spearman", labels=labels)
    assert not w.report_["aux"]["kept"]
    assert "the loss is the main task's loss alone" in caplog.text
    total, weights = w({"main": torch.tensor(2.0), "aux": torch.tensor(5.0)})
    assert float(total) == 2.0 and weights == {"main": 1.0, "aux": 0.0}
    with pytest.raises(ValueError, match="needs train_labels with the main task 'main'"):
        create_weighting("spearman").setup(TASKS, None)


# -- gradient-based weightings (TorchJD) -----------------------------------------------------
def conflicting_problem():
    """Shared linear layer + two linear heads whose gradients on the shared layer conflict."""
    model = Toy(seed=0)
    with torch.no_grad():
        model.heads["main"].weight.copy_(torch.tensor([[1.0, 0.5, -0.3, 0.2]]))
        model.heads["aux"].weight.copy_(torch.tensor([[-1.0, 0.2, 0.4, -0.1]]))
    x = torch.tensor([[1.0, 2.0, -0.5], [0.3, -1.0, 1.5]])

    def losses():
        f, out = model(x)
        return f, {"main": out["main"].mean(), "aux": out["aux"].mean() * 2.0}

    return model, losses


def flat_grads(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


@pytest.mark.parametrize("use_features", [False, True], ids=["params", "features"])
@pytest.mark.parametrize("name", JACOBIAN)
def test_jacobian_weightings_aggregate_the_shared_and_leave_heads_their_own_gradient(name, use_features):
    model, losses = conflicting_problem()
    shared = list(model.shared.parameters())
    _, ls = losses()
    own = {t: torch.autograd.grad(ls[t], shared + list(model.heads[t].parameters()), retain_graph=True)
           for t in ls}
    g = {t: torch.cat([v.reshape(-1) for v in own[t][:len(shared)]]) for t in own}
    assert g["main"] @ g["aux"] < 0, "the toy problem must have conflicting task gradients"

    w = build(name)
    model.zero_grad(set_to_none=True)
    f, ls = losses()
    total, logged = w(ls)
    assert logged == {} and float(total.detach()) == pytest.approx(float((ls["main"] + ls["aux"]).detach()))
    weights = w.backward(ls, shared, shared_features=f if use_features else None)
    assert set(weights) == {"main", "aux"}
    d = flat_grads(shared)
    assert torch.isfinite(d).all() and d.abs().sum() > 0
    for t in ("main", "aux"):
        for p, expected in zip(model.heads[t].parameters(), own[t][len(shared):]):
            assert torch.allclose(p.grad, expected), f"head {t} must get its own task's gradient"
    if name in ("upgrad", "mgda"):
        # The defining property: the update conflicts with no task.
        for t in ("main", "aux"):
            assert d @ g[t] >= -1e-5 * d.norm() * g[t].norm(), (t, float(d @ g[t]))
    if name == "pcgrad":
        assert not torch.allclose(d, g["main"] + g["aux"], atol=1e-4)
