import copy
import json
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kaggle_utils.models import (
    HEADS,
    Backbone,
    GeM,
    GradingModel,
    create_model,
    decode,
    encode_targets,
    get_model_spec,
    list_models,
    register_model,
    registry,
    weights,
)

EXPECTED = [f"efficientnet-b{i}" for i in range(8)] + [
    "se_resnext50_32x4d", "se_resnext101_32x4d", "inceptionv4", "inceptionresnetv2",
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
]
HEAD_SHAPES = {"regression": (2,), "ordinal": (2, 4), "classification": (2, 5)}
HEAD_POOLS = {"regression": "avg", "ordinal": "gem", "classification": "avg"}  # GeM on every backbone too
TIMINGS: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    """The machine is shared: cap intra-op threads, and print per-model timings at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    if TIMINGS:  # wall and CPU seconds: the machine is shared, so wall time alone misleads
        print("\nper-model forward test (wall/cpu s): "
              + ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in TIMINGS.items()))
        print(f"total {sum(w for w, _ in TIMINGS.values()):.1f}s wall, "
              f"{sum(c for _, c in TIMINGS.values()):.1f}s cpu for {len(TIMINGS)} models")


def test_registry_lists_every_expected_model():
    assert list_models() == EXPECTED
    assert list_models("efficientnet-lite*") == EXPECTED[-3:]
    assert list_models("se_*") == ["se_resnext50_32x4d", "se_resnext101_32x4d"]


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_every_head_at_224_and_320(name):
    """Random init, batch of 2, eval: finite outputs of the head's shape, grades decoded into [0, 4]."""
    start, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    # channels_last: NCHW depthwise/grouped convs are several times slower on CPU.
    model = create_model(name, head="regression").eval().set_channels_last()
    spec = get_model_spec(name)
    assert model.name == name and len(model.mean) == len(model.std) == 3 and 224 <= model.input_size <= 600
    # Heads are tiny: share one backbone pass per size between the three heads (B7 is slow on CPU).
    heads = {h: create_model_head(spec, model.num_features, h) for h in HEADS}
    for size in (224, 320):
        x = torch.randn(2, 3, size, size)
        with torch.inference_mode():
            feats = model.forward_features(x)
            assert feats.shape[:2] == (2, model.num_features) and torch.isfinite(feats).all()
            for head, m in heads.items():
                out = m.forward_head(feats)
                assert out.shape == HEAD_SHAPES[head], (name, size, head)
                assert torch.isfinite(out).all()
                grade = m.decode(out)
                assert grade.shape == (2,) and ((grade >= 0) & (grade <= 4)).all()
    TIMINGS[name] = (time.perf_counter() - start, time.process_time() - cpu)


def create_model_head(spec, num_features: int, head: str) -> GradingModel:
    """A GradingModel whose backbone is the identity: runs pooling + dropout + head on given features."""
    return GradingModel(spec, Backbone(nn.Identity(), num_features), head=head, pool=HEAD_POOLS[head]).eval()


def test_forward_is_head_of_features_and_trains():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    for head in HEADS:
        model = create_model("efficientnet-b0", head=head, pool="gem").eval().set_channels_last()
        with torch.no_grad():
            out = model(x)
            assert out.shape == HEAD_SHAPES[head]
            assert torch.allclose(out, model.forward_head(model.forward_features(x)))
    model.train()  # one backward pass: gradients reach GeM's p, the head and the stem
    model(x).square().mean().backward()
    assert torch.isfinite(model.pooling.p.grad) and model.fc.weight.grad.abs().sum() > 0
    assert model.backbone._conv_stem.weight.grad.abs().sum() > 0


def test_state_dict_round_trip_and_deepcopy():
    """What training needs: checkpoints reload into a fresh model, and EMA copies work."""
    torch.manual_seed(0)
    a = create_model("efficientnet-lite0", head="ordinal", pool="gem").eval()
    a.pooling.p.data.fill_(2.5)
    b = create_model("efficientnet-lite0", head="ordinal", pool="gem").eval().set_channels_last()
    b.load_state_dict(a.state_dict())  # NCHW checkpoint into an NHWC model: same values
    a.set_channels_last()
    ema = copy.deepcopy(a)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a(x), ema(x))
    assert all(k.split(".")[0] in {"backbone", "pooling", "fc"} for k in a.state_dict())


@pytest.mark.parametrize("name", ["efficientnet-b0", "efficientnet-lite0"])
def test_other_input_sizes(name):
    """Odd feature-map sizes (300 px) and 512 px work: TF 'same' padding is dynamic, pooling adaptive."""
    model = create_model(name, head="ordinal").eval().set_channels_last()
    with torch.inference_mode():
        for size in (300, 512):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 4)


def test_model_attributes_and_config():
    m = create_model("inceptionv4", head="classification", pool="gem", dropout=0.3)
    cfg = m.default_config
    assert json.loads(json.dumps(cfg)) == cfg
    assert (cfg["name"], cfg["head"], cfg["pool"], cfg["dropout"]) == ("inceptionv4", "classification", "gem", 0.3)
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.5] * 3 and cfg["input_size"] == 299
    assert cfg["num_features"] == 1536 and cfg["num_outputs"] == 5
    b0 = create_model("efficientnet-b0")
    assert b0.mean == (0.485, 0.456, 0.406) and b0.input_size == 224 and b0.dropout_rate == 0.2
    assert get_model_spec("efficientnet-b7").input_size == 600
    head_ids = {id(p) for p in b0.head_parameters()}
    assert head_ids.isdisjoint(id(p) for p in b0.backbone_parameters())
    b0.set_backbone_trainable(False)
    assert not any(p.requires_grad for p in b0.backbone_parameters())
    assert all(p.requires_grad for p in b0.head_parameters())


def test_bad_names_are_clear():
    with pytest.raises(ValueError, match="did you mean"):
        create_model("efficientnet-b8")
    with pytest.raises(ValueError, match="unknown head"):
        create_model("efficientnet-b0", head="softmax")
    with pytest.raises(ValueError, match="unknown pool"):
        create_model("efficientnet-b0", pool="max")
    with pytest.raises(ValueError, match="not DR grades"):
        create_model("efficientnet-b0", head="imagenet").decode(torch.zeros(1, 1000))


def test_register_model_is_one_decorator():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=4)

        def forward_features(self, x):
            return torch.relu(self.conv(x))

    try:
        @register_model("tiny-test", input_size=256, dropout=0.0)
        def _tiny() -> Backbone:
            return Backbone(Tiny(), 8, "forward_features")

        assert "tiny-test" in list_models()
        model = create_model("tiny-test", head="ordinal").eval()
        assert model.input_size == 256 and model(torch.rand(2, 3, 64, 64)).shape == (2, 4)
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny-test")(_tiny)
    finally:
        registry._REGISTRY.pop("tiny-test", None)


# ------------------------------------------------------------------------------------------- pooling
def test_gem_p1_is_average_pooling_and_large_p_tends_to_max():
    x = torch.rand(2, 3, 5, 7) + 0.01  # above eps: the clamp does nothing
    avg = x.mean(dim=(2, 3))
    assert torch.allclose(GeM(p=1.0)(x), avg, atol=1e-6)
    gem3 = GeM(p=3.0)(x)
    assert (gem3 >= avg - 1e-6).all() and (gem3 <= x.amax(dim=(2, 3)) + 1e-6).all()
    assert torch.allclose(GeM(p=60.0)(x), x.amax(dim=(2, 3)), rtol=0.1)
    gem = GeM()
    gem(torch.randn(2, 3, 4, 4)).sum().backward()  # negatives are clamped, p still gets a finite gradient
    assert torch.isfinite(gem.p.grad)


# ------------------------------------------------------------------------------------------- heads
def test_encode_targets_per_head():
    g = [0, 1, 2, 3, 4]
    assert encode_targets(g, "regression").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert encode_targets(g, "regression").dtype == torch.float32
    ordinal = encode_targets(g, "ordinal")
    assert ordinal.dtype == torch.float32 and ordinal.tolist() == [
        [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    cls = encode_targets(np.array(g), "classification")
    assert cls.dtype == torch.int64 and cls.tolist() == g
    # soft labels (pseudo-labelling): cumulative encoding sums back to the grade
    soft = encode_targets([2.25], "ordinal")
    assert torch.allclose(soft, torch.tensor([[1.0, 1.0, 0.25, 0.0]])) and soft.sum().item() == 2.25
    assert encode_targets(pd.Series([3, 1], dtype="Int64"), "classification").tolist() == [3, 1]


@pytest.mark.parametrize("bad", [[0, 5], [-1], [1, float("nan")]])
def test_encode_targets_rejects_bad_grades(bad):
    with pytest.raises(ValueError, match="bad values at positions"):
        encode_targets(bad, "regression")


def test_encode_targets_rejects_unlabelled_and_soft_classes():
    with pytest.raises(ValueError, match="unlabelled"):
        encode_targets(pd.Series([1, None], dtype="Int64"), "ordinal")
    with pytest.raises(ValueError, match="integer"):
        encode_targets([1.5], "classification")


def test_decode_inverts_confident_outputs():
    g = torch.tensor([0, 1, 2, 3, 4])
    ordinal_logits = (encode_targets(g, "ordinal") * 2 - 1) * 30
    assert torch.allclose(decode(ordinal_logits, "ordinal"), g.float(), atol=1e-4)
    cls_logits = nn.functional.one_hot(g, 5).float() * 30
    assert torch.allclose(decode(cls_logits, "classification"), g.float(), atol=1e-4)
    assert decode(torch.tensor([-1.0, 2.5, 9.0]), "regression").tolist() == [0.0, 2.5, 4.0]
    assert decode(torch.tensor([[5.0]]), "regression").tolist() == [4.0]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        decode(torch.zeros(2, 5), "ordinal")


# ------------------------------------------------------------------------------------------- real weights
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967}  # coffee mug, espresso


def _imagenet_input(model: GradingModel, image: np.ndarray) -> torch.Tensor:
    img = cv2.resize(image, (model.input_size, model.input_size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)
    return ((x - torch.tensor(model.mean)[:, None, None]) / torch.tensor(model.std)[:, None, None])[None]


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_lite_imagenet_weights_classify_natural_images(name):
    """The offline ImageNet weights are the real ones: a cat is a cat, an espresso an espresso."""
    skdata = pytest.importorskip("skimage.data")
    model = create_model(name, head="imagenet", pretrained=True).eval().set_channels_last()
    with torch.no_grad():
        for image, classes in ((skdata.chelsea(), IMAGENET_CATS), (skdata.coffee(), IMAGENET_COFFEE)):
            top5 = set(model(_imagenet_input(model, image))[0].topk(5).indices.tolist())
            assert top5 & classes, (name, sorted(top5))


def test_pretrained_grading_model_gets_backbone_weights_and_a_new_head():

    state = weights.load_weights(weights.resolve_weights("efficientnet-lite0"))
    model = create_model("efficientnet-lite0", head="ordinal", pretrained=True)
    assert torch.equal(model.backbone._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.backbone._blocks[5]._bn1.running_var, state["_blocks.5._bn1.running_var"])
    assert model.fc.weight.shape == (4, 1280)


def test_bn_momentum_is_set_on_every_batchnorm():
    import torch

    from kaggle_utils.models import create_model

    bns = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]  # noqa: E731
    assert {b.momentum for b in bns(create_model("efficientnet-lite0"))} == {0.1}
    kept = {round(b.momentum, 4) for b in bns(create_model("efficientnet-lite0", bn_momentum=None))}
    assert kept == {0.01}  # the TF port's value, which lags on short fine-tuning runs
