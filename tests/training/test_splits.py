from segpipe.training.splits import make_splits


def test_folds_partition_cases_and_are_seeded():
    ids = [f"c{i:02d}" for i in range(23)]
    folds = make_splits(ids, 5, seed=1)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == ids and len(folds) == 5
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 23
        assert 4 <= len(f["val"]) <= 5
    assert make_splits(ids, 5, seed=1) == folds and make_splits(ids, 5, seed=2) != folds


def test_groups_stay_together():
    ids = [f"{s:03d}_{k}HC" for s in range(12) for k in range(3)]
    groups = {c: c.split("_")[0] for c in ids}
    folds = make_splits(ids, 5, groups=groups)
    assert len(folds) == 5 and sorted(c for f in folds for c in f["val"]) == sorted(ids)
    for f in folds:
        assert {groups[c] for c in f["val"]}.isdisjoint({groups[c] for c in f["train"]})


def test_few_cases_fall_back():
    assert len(make_splits(["a", "b", "c"], 5)) == 3
    assert make_splits(["only"], 5) == [{"train": ["only"], "val": ["only"]}]
