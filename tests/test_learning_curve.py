"""The labels-per-class protocol and the paired tests (McNemar, paired bootstrap)."""

import numpy as np
import pytest

from tl_helpers.learning_curve import labels_per_class_curve, paired_gaps, per_class_indices, summarise
from tl_helpers.paired_tests import contingency_table, mcnemar_exact, paired_bootstrap


def test_per_class_takes_k_of_each_class_from_the_given_part_only():
    targets = [0] * 10 + [1] * 3 + [2] * 7
    sel = per_class_indices(targets, k=5, seed=1)
    counts = np.bincount(np.asarray(targets)[sel])
    assert counts.tolist() == [5, 3, 5]            # a class with fewer gives all it has
    assert sel == sorted(set(sel)) and max(sel) < len(targets)


def test_draws_are_repeatable_and_differ_between_seeds():
    targets = list(range(8)) * 20
    assert per_class_indices(targets, 5, seed=0) == per_class_indices(targets, 5, seed=0)
    assert per_class_indices(targets, 5, seed=0) != per_class_indices(targets, 5, seed=1)


def test_bad_k_says_what_to_do():
    with pytest.raises(ValueError, match="positive number"):
        per_class_indices([0, 1], 0)


def test_curve_passes_each_draw_its_seed_and_summary_has_an_interval():
    seen = []
    curve = labels_per_class_curve(lambda idx, s: seen.append(s) or 0.5 + 0.01 * s, [0, 1] * 10, [2, "all"],
                                   draws=3, seed=10)
    assert seen == [10, 11, 12, 10, 11, 12]
    mean, low, high = summarise(curve)[2]
    assert low < mean < high and round(mean, 3) == 0.61


def test_paired_gaps_need_the_same_points():
    with pytest.raises(ValueError, match="same ks"):
        paired_gaps({5: [1.0, 2.0]}, {10: [1.0, 2.0]})


def test_contingency_table_counts_every_image_once():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    t = contingency_table(a, b)
    assert t.sum() == 50 and t[0].sum() == a.sum() and t[:, 0].sum() == b.sum()


def test_mcnemar_ignores_the_images_both_get_right_or_wrong():
    a = [1] * 8 + [0] * 2
    b = [0] * 8 + [1] * 2
    p = mcnemar_exact(a, b)["p"]
    # adding images on which both agree changes neither the discordant counts nor p
    assert mcnemar_exact(a + [1] * 100 + [0] * 50, b + [1] * 100 + [0] * 50)["p"] == p


def test_mcnemar_and_paired_bootstrap_are_symmetric():
    a = [1] * 30 + [0] * 5 + [1] * 3
    b = [1] * 30 + [1] * 5 + [0] * 3
    assert mcnemar_exact(a, b)["p"] == mcnemar_exact(b, a)["p"]
    assert mcnemar_exact(a, b)["verdict"] == "tie"
    r, s = paired_bootstrap(a, b, seed=0), paired_bootstrap(b, a, seed=0)
    assert r.mean == pytest.approx(-s.mean) and r.verdict == s.verdict == "tie"


def test_paired_inputs_must_match():
    with pytest.raises(ValueError, match="same test images"):
        mcnemar_exact([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        paired_bootstrap([2, 0], [1, 0])
