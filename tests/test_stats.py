"""Tests of core.stats against SciPy, hand-worked cases and simulations with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from core.errors import MetricInputError, UNetLabError
from core.stats import (
    NOISE_ALPHA,
    WILCOXON_MIN_N,
    BootstrapInterval,
    CellStats,
    LearningCurve,
    NoiseVerdict,
    PairedComparison,
    _fit_power_law,
    _profile_fit,
    comparison_sentence,
    fit_learning_curve,
    format_cell,
    format_p,
    hedges_correction,
    holm,
    paired_bootstrap,
    paired_comparison,
    power_law,
    small_sample_expansion,
    within_seed_noise,
)

# --------------------------------------------------------------------------------------
# The helpers moved from core.report
# --------------------------------------------------------------------------------------


def test_cell_helpers_keep_their_behaviour():
    assert NOISE_ALPHA == 0.05
    cell = CellStats((0.8, 0.82, 0.81))
    assert cell.n == 3 and cell.mean == pytest.approx(0.81) and cell.sd == pytest.approx(0.01)
    assert math.isnan(CellStats(()).mean) and math.isnan(CellStats((0.5,)).sd)
    assert format_cell(cell) == "0.8100 ± 0.0100 (n=3)"
    assert format_cell(CellStats((0.5,))) == "0.5000 (n=1)" and format_cell(None) == "no runs"

    best, other = [0.90, 0.91, 0.92], [0.80, 0.81, 0.79]
    verdict = within_seed_noise(best, other)
    assert verdict == NoiseVerdict(False, pytest.approx(sps.ttest_ind(best, other, equal_var=False).pvalue),
                                   pytest.approx(0.11))
    assert within_seed_noise([0.9, 0.91], [0.9, 0.905]).within is True
    assert within_seed_noise([0.9], [0.8, 0.7]).within is None
    assert within_seed_noise([0.9, 0.9], [0.9, 0.9]) == NoiseVerdict(True, 1.0, 0.0)
    assert within_seed_noise([0.9, 0.9], [0.8, 0.8]).within is False


# --------------------------------------------------------------------------------------
# Paired comparison
# --------------------------------------------------------------------------------------


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 13))
    a = rng.normal(0.8, 0.03, n)
    return a, a - rng.normal(0.01, 0.02, n)


def _tied_case() -> tuple[np.ndarray, np.ndarray]:
    # Multiples of 1/64: the differences are exact, so ties stay ties (|d| = 1/64 three times).
    a = np.array([50, 52, 49, 51, 55, 47, 53, 50]) / 64
    b = np.array([49, 51, 50, 48, 52, 47, 51, 49]) / 64
    return a, b


def _zero_case() -> tuple[np.ndarray, np.ndarray]:
    a, b = _random_case(2)
    b[2] = a[2]  # one seed with no difference: scipy's zero_method="wilcox" discards it
    return a, b  # (here "pratt" would give p = 0.061 instead of 0.049)


CASES = {f"random{seed}": _random_case(seed) for seed in range(6)} | {"ties": _tied_case(), "zero": _zero_case()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paired_comparison_agrees_with_scipy(name):
    a, b = CASES[name]
    result = paired_comparison(a, b)
    reference = sps.ttest_rel(a, b)
    assert result.n == a.size and result.n_dropped == 0
    assert result.difference == pytest.approx(np.mean(a - b), abs=1e-12)
    assert result.mean_a - result.mean_b == pytest.approx(result.difference, abs=1e-12)
    assert result.sd_difference == pytest.approx(np.std(a - b, ddof=1), abs=1e-12)
    assert result.t == pytest.approx(reference.statistic, abs=1e-9)
    assert result.p_t == pytest.approx(reference.pvalue, abs=1e-9)
    low, high = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    # scipy defaults: zero_method="wilcox", method="auto" (exact, or exhaustive permutation with ties/zeros)
    assert result.p_wilcoxon == pytest.approx(sps.wilcoxon(a - b).pvalue, abs=1e-9)
    assert result.d_z == pytest.approx(result.difference / result.sd_difference)


def test_the_tied_and_zero_cases_really_have_ties_and_zeros():
    d = np.subtract(*_tied_case())
    assert np.unique(np.abs(d[d != 0])).size < np.count_nonzero(d) and np.count_nonzero(d == 0) == 1
    a, b = _zero_case()
    assert np.count_nonzero(a - b == 0) == 1 and np.any(a < b) and np.any(a > b)


def test_round_off_does_not_split_ties():
    """0.3 - 0.1 and 0.5 - 0.3 differ in the last bit; we rank them as tied (rounded differences)."""
    a = np.array([0.3, 0.5, 0.7, 0.9, 0.6, 0.4])
    b = np.array([0.1, 0.3, 0.5, 0.6, 0.65, 0.1])
    result = paired_comparison(a, b)
    assert result.p_wilcoxon == pytest.approx(sps.wilcoxon(np.round(a - b, 12)).pvalue, abs=1e-12)


def test_effect_size_and_interval_on_a_hand_worked_case():
    # differences 1, 2, 3: mean 2, sd 1, n 3, df 2
    result = paired_comparison([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert result.difference == 2 and result.sd_difference == 1
    assert result.t == pytest.approx(2 * math.sqrt(3))
    assert result.d_z == pytest.approx(2.0)
    # J(2) = Γ(1) / (sqrt(1) Γ(1/2)) = 1 / sqrt(pi)
    assert result.hedges_g_z == pytest.approx(2 / math.sqrt(math.pi))
    t_975_df2 = 4.302652729911275
    assert result.ci_low == pytest.approx(2 - t_975_df2 / math.sqrt(3))
    assert result.ci_high == pytest.approx(2 + t_975_df2 / math.sqrt(3))
    assert result.p_wilcoxon is None and result.p_wilcoxon_floor == pytest.approx(0.25)


def test_hedges_correction():
    assert hedges_correction(1) == 0.0 and math.isnan(hedges_correction(0.5))
    for df in (4, 9, 30):
        assert hedges_correction(df) == pytest.approx(1 - 3 / (4 * df - 1), abs=3e-3)
    assert math.isnan(paired_comparison([1.0, 2.0], [0.0, 0.5]).hedges_g_z)


def test_nan_pairs_are_dropped_and_counted():
    a, b = _random_case(4)
    clean = paired_comparison(a, b)
    a_gap, b_gap = np.append(a, [np.nan, 0.7, np.nan]), np.append(b, [0.6, np.nan, np.nan])
    result = paired_comparison(a_gap, b_gap)
    assert result.n == a.size and result.n_dropped == 3 and "3 pairs" in result.note
    assert (result.t, result.p_t, result.p_wilcoxon, result.difference) == \
        (clean.t, clean.p_t, clean.p_wilcoxon, clean.difference)


@pytest.mark.parametrize("a, b", [([0.8], [0.7]), ([0.8, np.nan], [np.nan, 0.7]), ([], [])])
def test_fewer_than_two_pairs_give_no_test(a, b):
    result = paired_comparison(a, b)
    assert result.n < 2 and result.p_t is None and result.p_wilcoxon is None
    assert math.isnan(result.ci_low) and math.isnan(result.d_z)
    assert "no test" in result.note


def test_identical_differences():
    same = paired_comparison([0.8, 0.7, 0.9, 0.6, 0.5], [0.8, 0.7, 0.9, 0.6, 0.5])
    assert same.p_t == 1.0 and same.t == 0.0 and same.difference == 0 and same.p_wilcoxon is None
    assert "same difference" in same.note and "zero" in same.note
    # 0.1 above on every seed (round-off in a - b does not matter)
    shifted = paired_comparison([0.8, 0.7, 0.9, 0.6, 0.5], [0.7, 0.6, 0.8, 0.5, 0.4])
    assert shifted.p_t == 0.0 and shifted.t == math.inf and shifted.constant_difference
    assert shifted.ci_low == shifted.ci_high == pytest.approx(0.1)
    assert shifted.p_wilcoxon == pytest.approx(0.0625)  # all five positive: the exact floor


def test_wilcoxon_needs_five_nonzero_differences():
    assert WILCOXON_MIN_N == 5
    rng = np.random.default_rng(2)
    a = rng.normal(0.8, 0.02, 5)
    five = paired_comparison(a, a - np.array([0.01, 0.02, 0.015, 0.03, 0.005]))
    assert five.p_wilcoxon == pytest.approx(0.0625) == five.p_wilcoxon_floor  # can never reach 0.05
    four = paired_comparison(a[:4], a[:4] - 0.01 * np.arange(1, 5))
    assert four.p_wilcoxon is None and four.p_wilcoxon_floor == pytest.approx(0.125)
    assert "no Wilcoxon" in four.note


def test_paired_comparison_rejects_bad_input():
    with pytest.raises(MetricInputError, match="same length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(UNetLabError, match="alpha"):
        paired_comparison([1.0, 2.0], [1.0, 2.0], alpha=1.5)


# --------------------------------------------------------------------------------------
# Two-stage bootstrap
# --------------------------------------------------------------------------------------


def test_bootstrap_covers_the_true_difference_at_about_the_nominal_rate():
    """200 simulated studies of 5 seeds x 15 images, seed-level sd 0.01, image-level sd 0.03."""
    rng = np.random.default_rng(2024)
    true, hits = -0.02, 0
    for _ in range(200):
        groups = [true + rng.normal(0, 0.01) + rng.normal(0, 0.03, 15) for _ in range(5)]
        interval = paired_bootstrap(groups, n_resamples=1000, rng=rng)
        hits += interval.contains(true)
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_spread_is_the_two_stage_one():
    """The interval's width matches the analytic sd of the two-stage bootstrap statistic:
    Var = (between-seed variance of seed means + mean within-seed variance / images) / seeds
    (both with ddof=0); leaving out either stage would be ~20% off here."""
    rng = np.random.default_rng(5)
    groups = [rng.normal(rng.normal(0, 0.02), 0.05, 10) for _ in range(6)]
    means = np.array([group.mean() for group in groups])
    within = np.array([group.var() / group.size for group in groups])
    sd = math.sqrt((np.mean((means - means.mean()) ** 2) + within.mean()) / len(groups))
    interval = paired_bootstrap(groups, n_resamples=20000, rng=1)
    assert (interval.high - interval.low) / (2 * 1.959964 * sd) == pytest.approx(1.0, abs=0.04)


def test_bootstrap_estimate_is_the_mean_of_seed_means():
    groups = [np.array([0.1, 0.3]), np.array([-0.2]), np.array([0.0, 0.0, 0.0, 0.6])]
    interval = paired_bootstrap(groups, n_resamples=500)
    assert interval.estimate == pytest.approx((0.2 - 0.2 + 0.15) / 3)
    assert interval.n_seeds == 3 and interval.n_images == 7 and interval.images_per_seed == (2, 1, 4)
    assert interval.low <= interval.estimate <= interval.high and interval.n_resamples == 500


def test_a_constant_difference_gives_a_zero_width_interval():
    groups = [np.full(count, -0.03) for count in (15, 9, 17, 12)]
    interval = paired_bootstrap(groups, n_resamples=2000, rng=7)
    assert interval.estimate == pytest.approx(-0.03, abs=1e-15)
    assert interval.low == pytest.approx(-0.03, abs=1e-15) and interval.high == pytest.approx(-0.03, abs=1e-15)


def test_bootstrap_is_deterministic_given_a_seed():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0, 0.03, 12) for _ in range(4)]
    assert paired_bootstrap(groups, 3000, rng=42) == paired_bootstrap(groups, 3000, rng=42)
    assert paired_bootstrap(groups, 3000) == paired_bootstrap(groups, 3000)  # None: a fixed seed
    assert paired_bootstrap(groups, 3000, rng=42) != paired_bootstrap(groups, 3000, rng=43)
    generator = np.random.default_rng(9)
    assert paired_bootstrap(groups, 3000, rng=generator) != paired_bootstrap(groups, 3000, rng=generator)


def test_bootstrap_drops_missing_values_and_empty_seeds():
    groups = [np.array([0.1, np.nan, 0.2]), np.array([]), np.array([np.nan]), np.array([0.05, 0.1])]
    interval = paired_bootstrap(groups, n_resamples=200)
    assert interval.n_seeds == 2 and interval.n_images == 4 and "2 missing" in interval.note
    nothing = paired_bootstrap([np.array([np.nan])])
    assert nothing.n_seeds == 0 and math.isnan(nothing.estimate) and "No per-image" in nothing.note
    one = paired_bootstrap([np.array([0.1, 0.2, 0.05])], n_resamples=200)
    assert one.n_seeds == 1 and "One seed" in one.note and one.low < one.high


def test_bootstrap_rejects_bad_input():
    with pytest.raises(MetricInputError, match="1-D"):
        paired_bootstrap([np.zeros((2, 2))])
    with pytest.raises(MetricInputError, match="confidence"):
        paired_bootstrap([np.zeros(3)], confidence=95)
    with pytest.raises(MetricInputError, match="n_resamples"):
        paired_bootstrap([np.zeros(3)], n_resamples=0)


# --------------------------------------------------------------------------------------
# Holm
# --------------------------------------------------------------------------------------


def test_holm_on_the_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], atol=1e-15)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.2]), [0.2])
    assert holm([]).shape == (0,)


def test_holm_is_monotone_capped_and_at_least_the_raw_p():
    rng = np.random.default_rng(8)
    for _ in range(20):
        p = rng.uniform(0, 0.3, rng.integers(2, 15)) ** 2
        adjusted = holm(p)
        order = np.argsort(p)
        assert np.all(np.diff(adjusted[order]) >= 0)
        assert np.all(adjusted >= p) and np.all(adjusted <= 1)
        assert adjusted[order[0]] == pytest.approx(min(1.0, p.size * p[order[0]]))


def test_holm_passes_missing_values_through_and_does_not_count_them():
    adjusted = holm([0.01, None, float("nan"), 0.04])
    assert np.isnan(adjusted[1]) and np.isnan(adjusted[2])
    np.testing.assert_allclose(adjusted[[0, 3]], [0.02, 0.04])  # m = 2
    assert np.isnan(holm([None, None])).all()
    with pytest.raises(MetricInputError):
        holm([0.5, 1.2])


# --------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------


def _comparison(difference: float, p_t: float | None, n: int) -> PairedComparison:
    return PairedComparison(n, 0, 0.8 + difference, 0.8, difference, 0.02, -3.0, p_t, None, None, -1.5, -1.2,
                            difference - 0.02, difference + 0.02, 0.95, 0.05)


def test_the_sentence_with_a_bootstrap_interval_and_holm():
    interval = BootstrapInterval(-0.031, -0.052, -0.012, 0.95, 5, 85, 10000, (17,) * 5)
    text = comparison_sentence("heavy", "none", "10%", _comparison(-0.03, 0.001, 5), interval, p_adjusted=0.004)
    assert text == ("heavy minus none at 10%: -0.031 [-0.052, -0.012] (bootstrap 95%), "
                    "p = 0.004 (paired t, Holm-adjusted), 5 seeds x 17 images")


def test_the_sentence_does_not_overclaim():
    text = comparison_sentence("heavy", "none", "10%", _comparison(-0.01, 0.31, 2), n_images=17)
    assert text == ("heavy minus none at 10%: -0.010 [-0.030, 0.010] (t 95%), p = 0.31 (paired t), "
                    "2 seeds x 17 images: not distinguishable with 2 seeds")
    # significant raw p, not after Holm
    text = comparison_sentence("heavy", "none", "10%", _comparison(-0.05, 0.01, 5), p_adjusted=0.12)
    assert "p = 0.12 (paired t, Holm-adjusted)" in text and text.endswith("not distinguishable with 5 seeds")
    single = comparison_sentence("light", "none", "20%", paired_comparison([0.8], [0.75]))
    assert single.endswith("no test possible, so not distinguishable with 1 seed") and "(no interval)" in single
    for sentence in (text, single):
        assert not any(word in sentence for word in ("no difference", "better", "worse", "significant", "equal"))


def test_p_values_are_not_rounded_across_the_level():
    assert [format_p(p) for p in (0.0004, 0.004, 0.0494, 0.0512, 0.41, 1.0)] == \
        ["p < 0.001", "p = 0.004", "p = 0.049", "p = 0.051", "p = 0.41", "p = 1.00"]


def test_the_sentence_from_real_numbers():
    rng = np.random.default_rng(12)
    base = rng.normal(0.8, 0.02, 5)
    heavy = base - 0.03 + rng.normal(0, 0.005, 5)
    comparison = paired_comparison(heavy, base)
    per_image = [rng.normal(d, 0.02, 12) for d in heavy - base]
    interval = paired_bootstrap(per_image, n_resamples=2000)
    text = comparison_sentence("heavy", "none", "10%", comparison, interval)
    assert text.startswith(f"heavy minus none at 10%: {interval.estimate:+.3f} [{interval.low:.3f}, "
                           f"{interval.high:.3f}] (bootstrap 95%), p < 0.001 (paired t), 5 seeds x 12 images")
    assert "p < 0.001" in text and "distinguishable" not in text


# --------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------

TRUE = (0.92, 0.6, 0.5)  # a, b, c


def _study(seed: int, sizes=(8, 16, 32, 64, 128, 256), n_seeds=5, seed_sd=0.005, point_sd=0.005):
    rng = np.random.default_rng(seed)
    n = np.tile(np.asarray(sizes, float), n_seeds)
    seeds = np.repeat(np.arange(n_seeds), len(sizes))
    y = power_law(n, *TRUE) + rng.normal(0, seed_sd, n_seeds)[seeds] + rng.normal(0, point_sd, n.size)
    return n, y, seeds


def test_the_fit_recovers_a_known_power_law():
    """One typical draw (about 1 in 10 draws misses the true gain: a 95% interval; the
    coverage itself is tested below)."""
    n, y, seeds = _study(0)
    curve = fit_learning_curve(n, y, seeds, ceiling=1.0, n_resamples=1000, rng=0)
    a, b, c = curve.parameters
    assert a == pytest.approx(TRUE[0], abs=0.02) and b > 0 and 0.2 < c < 1.0
    assert curve.n_points == 30 and curve.n_seeds == 5 and curve.sizes == (8, 16, 32, 64, 128, 256)
    grid = np.geomspace(2, 5000, 50)
    assert np.all(np.diff([curve.predict(value) for value in grid]) > 0)
    for n_from, n_to in ((32, 64), (256, 512)):
        true_gain = power_law(n_to, *TRUE) - power_law(n_from, *TRUE)
        estimate, low, high = curve.gain(n_from, n_to)
        assert low <= true_gain <= high and low <= estimate <= high
    estimate, low, high = curve.predict_interval(64)
    assert low <= power_law(64, *TRUE) <= high and estimate == curve.predict(64)


def test_the_gain_interval_covers_with_three_seeds():
    """60 simulated studies of 3 seeds x 4 sizes: the expanded interval of the gain from 12
    to 24 images covers the truth at about its nominal rate (plain percentiles: about 70%)."""
    true_gain = power_law(24, *TRUE) - power_law(12, *TRUE)
    hits = 0
    for seed in range(60):
        n, y, seeds = _study(100 + seed, sizes=(6, 12, 30, 48), n_seeds=3)
        curve = fit_learning_curve(n, y, seeds, ceiling=1.0, n_resamples=300, rng=seed)
        _, low, high = curve.gain(12, 24)
        hits += low <= true_gain <= high
    assert 0.85 <= hits / 60 <= 1.0


def test_small_sample_expansion():
    assert small_sample_expansion(5) == pytest.approx(1.5837, abs=1e-3)
    assert small_sample_expansion(3) > 2.5 and small_sample_expansion(1000) == pytest.approx(1.0, abs=2e-3)
    assert math.isnan(small_sample_expansion(1))
    # for a mean of S units it turns the bootstrap spread (ddof=0) into the t interval (ddof=1)
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 5)
    z = sps.norm.ppf(0.975)
    bootstrap_half = z * values.std() / math.sqrt(5)
    t_half = sps.t.ppf(0.975, 4) * values.std(ddof=1) / math.sqrt(5)
    assert bootstrap_half * small_sample_expansion(5) == pytest.approx(t_half)


def test_curve_fit_and_the_vectorised_profile_fit_agree():
    n, y, _ = _study(2, sizes=(6, 12, 30, 48), n_seeds=3)
    for ceiling in (None, 1.0):
        fitted = _fit_power_law(n, y, True, ceiling)
        profile = _profile_fit(n, y, np.ones((1, n.size)), True, ceiling)[0]
        np.testing.assert_allclose(profile, fitted, rtol=1e-4)


def test_fewer_than_three_sizes_give_a_note_not_an_exception():
    curve = fit_learning_curve([5, 5, 10, 10], [0.5, 0.6, 0.7, 0.7], seeds=[0, 1, 0, 1])
    assert isinstance(curve, LearningCurve) and curve.parameters is None and not curve.fitted
    assert "at least 3" in curve.note and math.isnan(curve.predict(20))
    assert all(math.isnan(v) for v in curve.gain(10, 20))
    assert curve.sentence(10, 10, "pixel F1").startswith("no learning-curve fit for pixel F1")
    assert fit_learning_curve([], []).parameters is None
    assert fit_learning_curve([4, 8, 16], [0.5, np.nan, 0.7]).parameters is None


def test_the_sentence_says_when_it_extrapolates():
    n, y, seeds = _study(3, sizes=(6, 12, 24), n_seeds=5)
    curve = fit_learning_curve(n, y, seeds, ceiling=1.0, n_resamples=1000)
    estimate, low, high = curve.gain(24, 48)
    text = curve.sentence(24, 24, "pixel F1")
    assert text.startswith(f"from 24 to 48 training images the fit predicts {estimate:+.3f} pixel F1 "
                           f"[{low:.3f}, {high:.3f}] (power law, 5 seeds; extrapolating beyond the largest "
                           "training set measured, 24 images)")
    inside = curve.sentence(6, 6, "pixel F1")
    assert "extrapolating" not in inside and inside.startswith("from 6 to 12 training images")


def test_the_sentence_says_when_the_interval_is_too_wide():
    rng = np.random.default_rng(4)
    n = np.tile([6.0, 12.0, 24.0], 3)
    y = 0.8 + rng.normal(0, 0.03, n.size)  # no trend at all
    curve = fit_learning_curve(n, y, np.repeat([0, 1, 2], 3))
    _, low, high = curve.gain(24, 48)
    assert low <= 0 <= high
    assert "too wide to say whether more images help" in curve.sentence(24, 24)


def test_one_seed_resamples_points_and_says_so():
    n, y, _ = _study(5, n_seeds=1, point_sd=0.01)
    curve = fit_learning_curve(n, y, rng=1)
    assert curve.n_seeds == 1 and "resamples points" in curve.note
    assert "1 seed, points resampled" in curve.sentence(64, 64)
    assert len(curve.bootstrap_parameters) > 0.9 * curve.n_resamples


def test_falling_curves_ceilings_and_determinism():
    n = np.tile([6.0, 12.0, 30.0, 48.0], 3)
    falling = fit_learning_curve(n, 0.6 + 0.3 * n ** -0.5, np.repeat([0, 1, 2], 4))
    assert falling.parameters[1] < 0 and falling.gain(12, 24)[0] < 0
    steep = fit_learning_curve(n, 1.05 - 0.8 * n ** -0.3, ceiling=1.0)
    assert steep.parameters[0] <= 1.0 and np.all(steep.bootstrap_parameters[:, 0] <= 1.0 + 1e-12)
    assert steep.predict_interval(1e6)[2] <= 1.0 and "ceiling" in steep.note
    noisy = _study(6, sizes=(6, 12, 30, 48), n_seeds=4, point_sd=0.01)
    first, second = fit_learning_curve(*noisy, rng=3), fit_learning_curve(*noisy, rng=3)
    assert first.gain(48, 96) == second.gain(48, 96)
    # (with 4 seeds there are only 35 distinct resamples, so compare the refits, not quantiles)
    assert not np.array_equal(fit_learning_curve(*noisy, rng=4).bootstrap_parameters, first.bootstrap_parameters)


def test_learning_curve_rejects_mismatched_input():
    with pytest.raises(MetricInputError):
        fit_learning_curve([1, 2, 3], [0.1, 0.2])
    with pytest.raises(MetricInputError):
        fit_learning_curve([1, 2, 3], [0.1, 0.2, 0.3], seeds=[0, 1])
