import math

import pytest
import torch

from kaggle_utils.models import HEADS, encode_targets
from kaggle_utils.training.losses import LOSS_HEADS, check_loss_head, default_loss_for, get_loss


def test_mse_by_hand_and_shape_robust():
    pred, target = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 4.0])
    loss = get_loss("mse", head="regression")
    assert loss(pred, target).item() == pytest.approx(5 / 3)
    assert loss(pred[:, None], target).item() == pytest.approx(5 / 3)  # (N, 1) does not broadcast to (N, N)
    with pytest.raises(ValueError, match="does not match"):
        loss(torch.zeros(4), target)


def test_clipped_mse_ignores_overshoot_only_at_the_ends():
    pred = torch.tensor([-1.0, 5.0, -1.0, 5.0, 2.0, 0.5], requires_grad=True)
    target = torch.tensor([0.0, 4.0, 1.0, 3.0, 2.0, 0.0])
    loss = get_loss("clipped_mse")(pred, target)
    # free: (t=0, p=-1), (t=4, p=5); squared errors elsewhere: 4, 4, 0, 0.25
    assert loss.item() == pytest.approx((4 + 4 + 0 + 0.25) / 6)
    loss.backward()
    assert pred.grad[:2].tolist() == [0.0, 0.0] and (pred.grad[2:4] != 0).all()
    # undershoot at the top / overshoot at the bottom is still an error
    assert get_loss("clipped_mse")(torch.tensor([3.0, 1.0]), torch.tensor([4.0, 0.0])).item() == pytest.approx(1.0)


def test_huber_and_smooth_l1_by_hand():
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.0])
    expected = (0.5 * 0.25 + (3.0 - 0.5)) / 2  # quadratic inside delta=1, linear outside
    assert get_loss("huber")(pred, target).item() == pytest.approx(expected)
    assert get_loss("smooth_l1")(pred, target).item() == pytest.approx(expected)
    assert get_loss("huber", delta=2.0)(pred, target).item() == pytest.approx((0.125 + 2 * (3 - 1)) / 2)


def test_bce_and_ce_by_hand():
    targets = encode_targets([0, 2, 4], "ordinal")
    assert get_loss("bce", head="ordinal")(torch.zeros(3, 4), targets).item() == pytest.approx(math.log(2))
    confident = (targets * 2 - 1) * 20
    assert get_loss("bce")(confident, targets).item() < 1e-6
    with pytest.raises(ValueError, match="encode_targets"):
        get_loss("bce")(torch.zeros(3, 5), targets)
    classes = encode_targets([0, 3], "classification")
    assert get_loss("ce", head="classification")(torch.zeros(2, 5), classes).item() == pytest.approx(math.log(5))
    weighted = get_loss("ce", weight=[1, 1, 1, 3, 1])  # lists from a config become tensors
    assert weighted(torch.zeros(2, 5), classes).item() == pytest.approx(math.log(5))


@pytest.mark.parametrize("head", list(HEADS))
def test_default_loss_trains_its_head_end_to_end(head):
    name = default_loss_for(head)
    assert LOSS_HEADS[name] == head
    outputs = torch.randn(3, HEADS[head]).squeeze(1) if head == "regression" else torch.randn(3, HEADS[head])
    value = get_loss(name, head=head)(outputs, encode_targets([0, 2, 4], head))
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("loss,head", [("ce", "regression"), ("bce", "classification"), ("mse", "ordinal")])
def test_loss_head_mismatch_is_a_clear_error(loss, head):
    with pytest.raises(ValueError, match=f"not a {head} head.*default '{default_loss_for(head)}'"):
        get_loss(loss, head=head)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        get_loss("focal")
    with pytest.raises(ValueError, match="unknown head"):
        check_loss_head("mse", "softmax")
    with pytest.raises(ValueError, match="unknown head"):
        default_loss_for("softmax")
