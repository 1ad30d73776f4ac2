from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import resized_table

from kaggle_utils.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FundusDataset,
    GradeBalancedSampler,
    ShuffleSampler,
    read_rgb,
)

SIZE = 64


@pytest.fixture(scope="module")
def table(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return resized_table(shared_data, tmp_path_factory.mktemp("img"), n=10, size=SIZE)


# ------------------------------------------------------------------------------------------------- dataset


def test_item_is_normalised_chw_float_of_the_rgb_image(table):
    ds = FundusDataset(table, head="regression")
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE)
    rgb = read_rgb(table["path"][3])
    back = (x.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255
    np.testing.assert_allclose(back, rgb, atol=1e-3)
    assert y.dtype == torch.float32 and float(y) == table["grade"][3]


def test_unreadable_cache_file_names_the_file_and_the_fix(table, tmp_path):
    good = Path(table["path"][0]).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    for name, reason in (("cut.png", "corrupt"), ("gone.png", "file not found")):
        with pytest.raises(ValueError, match=reason) as info:
            read_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "rebuild the cache" in str(info.value)


@pytest.mark.parametrize(("head", "shape", "dtype"), [
    ("regression", (), torch.float32), ("ordinal", (4,), torch.float32), ("classification", (), torch.int64)])
def test_targets_follow_the_head(table, head, shape, dtype):
    ds = FundusDataset(table, head=head)
    grade = int(table["grade"][0])
    _, y = ds[0]
    assert y.shape == shape and y.dtype == dtype
    if head == "ordinal":
        assert y.tolist() == [float(grade > k) for k in range(4)]
    else:
        assert int(y) == grade


def test_in_memory_matches_disk_and_resizes(table):
    disk = FundusDataset(table, size=32)
    mem = FundusDataset(table, size=32, in_memory=True)
    assert mem.images is not None and mem.images[0].shape == (32, 32, 3)
    for i in (0, 5):
        assert torch.equal(disk[i][0], mem[i][0])


def test_prefers_cache_path_and_names_bad_files(table, tmp_path):
    t = table.assign(cache_path=table["path"], path="/nonexistent/original.jpg")
    assert FundusDataset(t)[0][0].shape == (3, SIZE, SIZE)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = table.assign(path=[str(broken)] + list(table["path"][1:]))
    with pytest.raises(ValueError, match="broken.png"):
        FundusDataset(bad)[0]


def test_soft_grades_stay_soft_and_missing_cache_paths_fall_back(table):
    t = table.assign(grade=[2.6] + list(table["grade"][1:].astype(float)),
                     cache_path=[None] + list(table["path"][1:]), path=table["path"])
    assert float(FundusDataset(t, head="regression")[0][1]) == pytest.approx(2.6)
    np.testing.assert_allclose(FundusDataset(t, head="ordinal")[0][1].numpy(), [1, 1, 0.6, 0], atol=1e-6)
    assert GradeBalancedSampler(t["grade"]).grades[0] == 3


def test_unlabelled_rows_get_nan_targets(table):
    t = table.assign(grade=pd.array([None] + list(table["grade"][1:]), dtype="Int64"))
    ds = FundusDataset(t)
    assert torch.isnan(ds[0][1]) and not torch.isnan(ds[1][1])


def test_augmentation_is_a_function_of_the_sample_seed(table):
    aug = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    ds = FundusDataset(table, transform=aug)
    plain = ds.image(2)
    assert torch.equal(ds[(2, 123)][0], ds[(2, 123)][0])
    combos = set()
    for seed in range(40):
        out = ds.augment(plain, seed)
        combos.add((np.array_equal(out, plain[:, ::-1]) or np.array_equal(out, plain[::-1, ::-1]),
                    np.array_equal(out, plain[::-1]) or np.array_equal(out, plain[::-1, ::-1])))
    # one shared generator per sample: the two flips are independent (all four combinations happen)
    assert combos == {(False, False), (True, False), (False, True), (True, True)}
    ds.set_epoch(0)
    e0 = ds[4][0]
    ds.set_epoch(1)
    assert torch.equal(ds[4][0], ds[4][0])
    assert any(not torch.equal(FundusDataset(table, transform=aug, seed=s)[4][0], e0) for s in range(1, 6))


# ------------------------------------------------------------------------------------------------- sampler

GRADES = np.array([0] * 500 + [1] * 100 + [2] * 200 + [3] * 100 + [4] * 100)


def test_balanced_sampler_respects_rates_per_image():
    s = GradeBalancedSampler(GRADES, rates=(1, 2, 2, 2, 2), num_samples=40000, seed=0)
    share = np.bincount(GRADES[list(s)], minlength=5) / 40000
    expected = np.array([500, 200, 400, 200, 200]) / 1500
    np.testing.assert_allclose(s.expected_share(), expected)
    np.testing.assert_allclose(share, expected, atol=0.01)


def test_balanced_sampler_grade_mode_balances_shares():
    s = GradeBalancedSampler(GRADES, rates=(1, 1, 1, 1, 1), num_samples=40000, seed=1, mode="grade")
    share = np.bincount(GRADES[list(s)], minlength=5) / 40000
    np.testing.assert_allclose(share, 0.2, atol=0.01)


def test_source_grade_mode_shares_the_epoch_between_cameras_and_tempers_rare_grades():
    """A big source (GRADES, 1,000 images) and a small one (110 images, one of grade 3): each gets half the
    epoch; inside the small one grade g gets a share proportional to sqrt(its count), so its one grade-3 image
    is drawn 1/(10+sqrt(10)+1+...) of the time rather than a fifth (fully balanced) of it."""
    small = np.array([0] * 100 + [1] * 4 + [2] * 5 + [3] * 1)
    grades = np.concatenate([GRADES, small])
    groups = np.array(["big"] * len(GRADES) + ["small"] * len(small))
    s = GradeBalancedSampler(grades, rates=(1, 1, 1, 1, 1), num_samples=60000, seed=0, mode="source_grade",
                             groups=groups)
    drawn = np.array(list(s))
    assert abs((groups[drawn] == "small").mean() - 0.5) < 0.01
    root = np.sqrt([100, 4, 5, 1])
    small_share = np.bincount(grades[drawn][groups[drawn] == "small"], minlength=5)[:4] / (groups[drawn] == "small").sum()
    np.testing.assert_allclose(small_share, root / root.sum(), atol=0.01)
    big_root = np.sqrt([500, 100, 200, 100, 100])
    big_share = np.bincount(grades, weights=np.where(groups == "big", s.p, 0), minlength=5) * 2
    np.testing.assert_allclose(big_share, big_root / big_root.sum(), atol=1e-9)
    weighted = GradeBalancedSampler(grades, num_samples=60000, seed=0, mode="source_grade", groups=groups,
                                    row_weights=np.where(groups == "small", 3.0, 1.0))
    assert abs((groups[np.array(list(weighted))] == "small").mean() - 0.75) < 0.01  # source weight 3:1
    with pytest.raises(ValueError, match="source of each"):
        GradeBalancedSampler(grades, mode="source_grade")


@pytest.mark.parametrize("make", [
    lambda seed: GradeBalancedSampler(GRADES, seed=seed, num_samples=300),
    lambda seed: ShuffleSampler(len(GRADES), seed=seed),
])
def test_sampler_is_deterministic_per_seed_and_epoch(make):
    a, b = make(7), make(7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    c = make(8)
    c.set_epoch(2)
    assert list(a) != list(c)


def test_shuffle_sampler_is_a_permutation():
    s = ShuffleSampler(37, seed=3)
    assert sorted(s) == list(range(37))


def test_state_roundtrip_resumes_mid_epoch():
    a = GradeBalancedSampler(GRADES, seed=5, num_samples=200, yield_seeds=True)
    a.set_epoch(4)
    full = list(a)
    state = a.state_dict(position=48)
    b = GradeBalancedSampler(GRADES, seed=5, num_samples=200, yield_seeds=True)
    b.load_state_dict(state)
    assert b.epoch == 4 and len(b) == 152
    assert list(b) == full[48:]
    b.set_epoch(5)
    assert len(b) == 200


def test_state_refuses_other_settings():
    state = GradeBalancedSampler(GRADES, seed=5).state_dict()
    with pytest.raises(ValueError, match="rates"):
        GradeBalancedSampler(GRADES, rates=(1, 1, 1, 1, 1), seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="n="):
        GradeBalancedSampler(GRADES[:-1], seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="kind"):
        ShuffleSampler(len(GRADES), seed=5).load_state_dict(state)


@pytest.mark.parametrize("n", [36, 37])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(n):
    world = 3
    shards = [ShuffleSampler(n, seed=9, rank=r, world_size=world, yield_seeds=True) for r in range(world)]
    for s in shards:
        s.set_epoch(1)
    items = [list(s) for s in shards]
    assert len({len(i) for i in items}) == 1  # equal length: no rank waits on the others
    indices = [[i for i, _ in it] for it in items]
    assert set().union(*map(set, indices)) == set(range(n))
    if n % world == 0:
        assert sum(len(set(i)) for i in indices) == n  # disjoint
    # augmentation seeds hang on the global position, not on the world size
    single = ShuffleSampler(n, seed=9, yield_seeds=True)
    single.set_epoch(1)
    flat = list(single)
    for r in range(world):
        assert items[r][: len(flat[r::world])] == flat[r::world][: len(items[r])]


def test_balanced_ddp_shards_interleave_the_global_list():
    shards = [GradeBalancedSampler(GRADES, seed=2, num_samples=101, rank=r, world_size=2) for r in range(2)]
    whole = shards[0].epoch_indices()
    assert len(whole) == 102
    assert list(shards[0]) == whole[0::2].tolist() and list(shards[1]) == whole[1::2].tolist()


def test_sampler_rejects_unlabelled_and_out_of_range():
    with pytest.raises(ValueError, match="grade for every row"):
        GradeBalancedSampler(pd.array([0, None, 2], dtype="Int64"))
    with pytest.raises(ValueError, match="rates has 3"):
        GradeBalancedSampler([0, 4], rates=(1, 2, 2))


def test_shuffle_sampler_num_samples_chains_permutations():
    s = ShuffleSampler(10, seed=4, num_samples=25)
    items = list(s)
    assert len(items) == 25 and sorted(items[:10]) == list(range(10)) and sorted(items[10:20]) == list(range(10))
    assert set(np.bincount(items)) == {2, 3}
