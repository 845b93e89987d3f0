import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monitor.model.backbones import BackboneError, build_backbone


def _classify(img: np.ndarray) -> int:
    bb = build_backbone("efficientnet_lite0", ["avgpool"])
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - bb.mean) / bb.std
    with torch.no_grad():
        return int(bb.net(x).argmax())


def test_embedded_weights_are_real_imagenet_weights():
    """A real photo lands in its ImageNet class; random weights would not (1000 classes)."""
    skdata = pytest.importorskip("skimage.data")
    assert _classify(skdata.chelsea()) in (281, 282, 283, 284, 285)  # tabby/tiger/Persian/Siamese/Egyptian cat
    assert _classify(skdata.coffee()) in (967, 968, 504)  # espresso, cup, coffee mug


def test_layers_have_announced_shapes():
    bb = build_backbone("efficientnet_lite0", ["stage3", "stage5"])
    out = bb(bb.prepare(torch.rand(1, 1, 96, 128)))
    for name, t in out.items():
        info = bb.info(name)
        assert t.shape == (1, info.channels, 96 // info.stride, 128 // info.stride)


def test_resnet18_without_weights_file_refuses_to_start():
    with pytest.raises(BackboneError, match="needs a weights file"):
        build_backbone("resnet18", ["avgpool"])


def test_resnet18_from_a_torchvision_checkpoint_file(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    bb = build_backbone("resnet18", ["layer2", "avgpool"], str(path))
    assert torch.equal(bb.net.conv1.weight, net.conv1.weight)
    out = bb(bb.prepare(torch.rand(2, 1, 64, 64)))
    assert out["avgpool"].shape == (2, 512, 1, 1) and out["layer2"].shape == (2, 128, 8, 8)


def test_missing_or_mismatching_weights_file_is_an_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("resnet18", ["avgpool"], str(tmp_path / "nope.pth"))
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit"):
        build_backbone("resnet18", ["avgpool"], str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("name,layers,match", [
    ("alexnet", ["x"], "unknown backbone"),
    ("efficientnet_lite0", ["layer3"], "has no layer"),
    ("efficientnet_lite0", [], "at least one layer"),
])
def test_bad_backbone_requests(name, layers, match):
    with pytest.raises(BackboneError, match=match):
        build_backbone(name, layers)


def test_random_weights_only_when_asked():
    bb = build_backbone("efficientnet_lite0", ["stage3"], "none")
    assert bb.weights_sha256 == "random"
    assert build_backbone("efficientnet_lite0", ["stage3"]).weights_sha256 != "random"


def test_vgg_backbones_for_the_papers_networks_name_layers_by_relu():
    b = build_backbone("vgg19", ["relu1_2", "relu3_4", "relu5_4"], "none")
    out = b(b.prepare(torch.rand(1, 1, 64, 96)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu1_2": (1, 64, 64, 96), "relu3_4": (1, 256, 16, 24), "relu5_4": (1, 512, 4, 6)}
    assert b.info("relu4_4").channels == 512 and b.info("relu4_4").stride == 8
    assert "relu3_2" in build_backbone("vgg11", ["relu3_2"], "none").infos
    with pytest.raises(BackboneError, match="needs a weights file"):
        build_backbone("vgg19", ["relu1_1"], None)


def test_se_resnet18_loads_a_state_dict_and_is_resnet18_plus_channel_gates(tmp_path):
    from monitor.model.backbones import _se_resnet18

    torch.manual_seed(0)
    se = _se_resnet18()
    sd = se.state_dict()
    assert "layer1.0.se.fc1.weight" in sd and sd["layer4.1.se.fc1.weight"].shape == (32, 512, 1, 1)
    for key in sd:  # gates wide open: sigmoid(30) == 1, so the network must compute plain ResNet-18
        if key.endswith("se.fc2.bias"):
            sd[key] = torch.full_like(sd[key], 30.0)
        elif key.endswith("se.fc2.weight"):
            sd[key] = torch.zeros_like(sd[key])
    path = tmp_path / "seresnet18.pth"
    torch.save(sd, path)
    bb = build_backbone("se_resnet18", ["layer4"], str(path))
    plain = {k: v for k, v in sd.items() if ".se." not in k}  # the same weights without the gates
    ref = build_backbone("resnet18", ["layer4"], "none")
    ref.net.load_state_dict(plain)  # strict: exactly ResNet-18's parameters
    x = bb.prepare(torch.rand(1, 1, 64, 64))
    assert torch.allclose(bb(x)["layer4"], ref(x)["layer4"], atol=1e-5)
    for key in sd:  # gates closed: every residual branch is switched off, so the output changes
        if key.endswith("se.fc2.bias"):
            sd[key] = torch.full_like(sd[key], -30.0)
    bb.net.load_state_dict(sd)
    assert not torch.allclose(bb(x)["layer4"], ref(x)["layer4"], atol=1e-3)
    with pytest.raises(BackboneError, match="do not fit"):  # a plain ResNet-18 checkpoint lacks the gates
        torch.save(plain, tmp_path / "plain.pth")
        build_backbone("se_resnet18", ["layer4"], str(tmp_path / "plain.pth"))
    with pytest.raises(BackboneError, match="needs a weights file"):
        build_backbone("se_resnet18", ["layer4"])
