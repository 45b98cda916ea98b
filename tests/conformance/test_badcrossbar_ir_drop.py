"""IR drop against badcrossbar (Joksas & Mehonic's crossbar circuit solver, a real dependency of the test extra).

The same circuit in both: ideal voltage sources at the rows' left ends, a virtual ground at the columns' bottom
ends, every wire segment (source to first device, device to device, last device to ground) of resistance r, with
conductances normalized to g_max = 1 and r the segment resistance x g_max. On random arrays (sizes 1-32 x 1-32,
r log-uniform in [1e-4, 3e-2], conductances in [0.05, 1], inputs in [-1, 1]):

* ``nodal_solve`` (exact) equals badcrossbar's output currents to 1e-9 of the largest ideal output current;
* ``analytic`` (the model every read uses) is within 25% of the IR drop itself (max |badcrossbar - ideal|) with
  no sweep and within 2.5% after 4 sweeps; the ideal matmul scores 100% on this scale. Measured on these 24
  arrays: at most 19% and 1.6%; the mean-field error grows with r (m + n), from below 2% at r < 1e-3 to 19% on
  24 x 11 at r = 0.028, where the drop is as large as the largest ideal current.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from targets.crossbar.ir_drop import analytic, nodal_solve

with warnings.catch_warnings():  # badcrossbar.plot needs pycairo, which the computations do not
    warnings.simplefilter("ignore", ImportWarning)
    import badcrossbar

EXACT_TOL = 1e-9
ANALYTIC_TOL = {0: 0.25, 4: 0.025}
CASES = 24


def random_array(seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    m, n = (int(x) for x in rng.integers(1, 33, size=2))
    r = float(10 ** rng.uniform(-4, np.log10(3e-2)))
    g = rng.uniform(0.05, 1.0, size=(m, n))
    v = rng.uniform(-1.0, 1.0, size=(m, 3))
    return g, v, r


def badcrossbar_currents(g: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """badcrossbar's output currents [p, n] for voltages v [m, p] and resistances 1 / g."""
    logging.disable(logging.INFO)  # badcrossbar logs every step at INFO on stdout
    try:
        solution = badcrossbar.compute(v, 1 / g, r_i=r, node_voltages=False, all_currents=False)
    finally:
        logging.disable(logging.NOTSET)
    return np.asarray(solution.currents.output, dtype=np.float64).reshape(v.shape[1], g.shape[1])


@pytest.mark.parametrize("seed", range(CASES))
def test_ir_drop_matches_badcrossbar(seed):
    g, v, r = random_array(seed)
    reference = badcrossbar_currents(g, v, r)
    gt, vt = torch.tensor(g), torch.tensor(v.T)
    ideal = (vt @ gt).numpy()
    scale = np.abs(ideal).max()
    drop = np.abs(reference - ideal).max()
    assert np.abs(nodal_solve(gt, vt, r).numpy() - reference).max() <= EXACT_TOL * scale
    for sweeps, tol in ANALYTIC_TOL.items():
        error = np.abs(analytic(gt, vt, r, iterations=sweeps).numpy() - reference).max()
        assert error <= tol * drop, (g.shape, r, sweeps, error / drop)


def test_a_wrong_wire_model_fails():
    """The comparison can fail: the exact solve with 10% more segment resistance is outside the tolerance."""
    g, v, r = random_array(3)
    reference = badcrossbar_currents(g, v, r)
    wrong = nodal_solve(torch.tensor(g), torch.tensor(v.T), 1.1 * r).numpy()
    assert np.abs(wrong - reference).max() > 1e3 * EXACT_TOL * np.abs(reference).max()
