"""Appendix D (cyb_nb.stats): average ranks, Spearman's rho against scipy, calibration; and the re-export from cyb_nb.decode."""
import math

import pytest
import torch

import cyb_nb.decode as decode
from cyb_nb.stats import _rank, calibration, plot_calibration, spearman


def test_reexported_from_decode():
    assert decode.spearman is spearman and decode.calibration is calibration and decode.plot_calibration is plot_calibration
    assert {"spearman", "calibration", "plot_calibration"} <= set(decode.__all__)


def test_stats_does_not_import_decode():
    import cyb_nb.stats as st
    src = open(st.__file__).read()
    assert "decode" not in src.split("__all__")[0]


def test_average_ranks_by_hand():
    assert _rank(torch.tensor([3., 1, 4, 1, 5])).tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]
    assert _rank(torch.tensor([2., 2, 2])).tolist() == [2.0, 2.0, 2.0]


def test_spearman_no_ties_formula():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, generator=g), torch.randn(40, generator=g)
    e = x.argsort().argsort().double() - y.argsort().argsort().double()
    assert abs(spearman(x, y) - (1 - 6 * float((e ** 2).sum()) / (40 * (40 ** 2 - 1)))) < 1e-12
    assert spearman(torch.tensor([1., 2, 3, 4]), torch.tensor([1., 3, 2, 4])) == pytest.approx(0.8, abs=1e-12)


def test_spearman_vs_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    for n in [2, 3, 5, 17, 200]:
        for ties in [False, True]:
            x = torch.randint(0, 4, (n,), generator=g).double() if ties else torch.randn(n, generator=g, dtype=torch.float64)
            y = torch.randn(n, generator=g, dtype=torch.float64)
            if x.unique().numel() < 2:
                continue
            ref = stats.spearmanr(x.numpy(), y.numpy()).statistic
            assert abs(spearman(x, y) - ref) < 1e-10


def test_calibration_vs_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    d, t = torch.rand(4, 30, 4, generator=g), torch.rand(4, 30, 4, generator=g)
    mask = torch.rand(4, 30, generator=g) > 0.3
    cal = calibration(d, t, mask)
    assert len(cal) == 3
    for i, c in enumerate(cal):
        ref = stats.spearmanr(d[mask][:, i].numpy(), (t[mask][:, i + 1] - t[mask][:, i]).numpy())
        assert abs(c["spearman"] - ref.statistic) < 1e-10 and c["n"] == int(mask.sum())


def test_spearman_constant_warns():
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))



def test_bad_arguments():
    with pytest.raises(ValueError, match="equal length"):
        spearman(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        spearman(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="finite"):
        spearman(torch.tensor([1.0, float("nan")]), torch.zeros(2))
    with pytest.raises(ValueError, match="mask"):
        calibration(torch.rand(5, 4), torch.rand(5, 4), torch.ones(3, dtype=torch.bool))
