"""The GDU property (docs/ep.md#bptt-and-the-gdu-property): per-step EP updates equal BPTT gradients as beta -> 0.

Acceptance: float64, a tied MLP with two hidden layers and a small tied ConvNet,
free phase converged; relative error (normalised RMSE over all steps and units)
at most 1e-2 at beta = 1e-3 one-sided, decreasing with beta, and smaller with
symmetric nudging at the same beta. The error of one-sided EP is O(beta) and of
symmetric EP O(beta^2), so the ratios asserted below hold with a wide margin.
"""

import pytest
import torch

from hwtoolkit.diagnostics.gdu import fidelity, gdu
from hwtoolkit.network import ConvLayer, NetworkSpec, init_parameters

NETWORKS = {
    "mlp_2_hidden": NetworkSpec(input_shape=(1, 10, 10), hidden=(32, 24), classes=10, output="mse"),
    "convnet": NetworkSpec(input_shape=(1, 12, 12), conv=(ConvLayer(4, 3, padding=1), ConvLayer(6, 3, padding=1)),
                           classes=10, output="mse"),
}


def _run(name, beta, estimator):
    spec = NETWORKS[name]
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(8, *spec.input_shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, spec.classes, (8,), generator=gen)
    params = init_parameters(spec, 5, torch.float64)
    return gdu(spec, params, x, y, beta=beta, steps=10, free_steps=150, estimator=estimator)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_gdu_property(name):
    one = {b: _run(name, b, "one_sided") for b in (1e-2, 1e-3, 1e-4)}
    sym = _run(name, 1e-3, "symmetric")
    assert one[1e-3].free_residual < 1e-12  # the theorem assumes a converged free phase
    assert one[1e-3].worst_relative_error() <= 1e-2
    errors = [one[b].worst_relative_error() for b in (1e-2, 1e-3, 1e-4)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 5  # O(beta): a tenfold smaller beta, a roughly tenfold smaller error
    assert sym.worst_relative_error() < one[1e-3].worst_relative_error()
    # O(beta^2) once beta is small enough that no unit crosses a kink of the piecewise-linear dynamics
    # (a hard-sigmoid bound or a max-pool switch): at beta = 1e-4 one-sided is ~1e-4, symmetric ~1e-8
    assert _run(name, 1e-4, "symmetric").worst_relative_error() < 1e-6
    assert set(sym.fidelity) >= {"s1", "s2", "s3", "w1", "b1", "w2", "w3"}
    for f in one[1e-3].fidelity.values():
        assert f.cosine > 0.9999 and f.sign_disagreement < 0.01


def test_untied_network_reports_asymmetry_and_loses_fidelity():
    spec = NetworkSpec(input_shape=(1, 6, 6), hidden=(16, 12), classes=5, output="mse", tied=False)
    params = init_parameters(spec, 2, torch.float64)
    x = torch.rand(6, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    untied = gdu(spec, params, x, y, beta=1e-4, steps=8, free_steps=150)
    assert set(untied.asymmetry) == {"w2", "w3"} and min(untied.asymmetry.values()) > 0.5
    # feedback equal to the forward weights: a tied network in disguise, the property is back
    tied_params = dict(params, fb2=params["w2"].clone(), fb3=params["w3"].clone())
    tied = gdu(spec, tied_params, x, y, beta=1e-4, steps=8, free_steps=150)
    assert max(tied.asymmetry.values()) == 0.0
    assert tied.fidelity["w1"].relative_error < 1e-3 < untied.fidelity["w1"].relative_error


def test_fidelity_metrics():
    g = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    same = fidelity(g, g)
    assert same.relative_error == 0 and same.sign_disagreement == 0 and same.cosine == pytest.approx(1.0)
    flipped = fidelity(-g, g)
    assert flipped.relative_error == pytest.approx(2.0) and flipped.sign_disagreement == 1.0
    assert flipped.cosine == pytest.approx(-1.0)


def test_gdu_rejects_bad_arguments():
    spec = NETWORKS["mlp_2_hidden"]
    p = init_parameters(spec, 0, torch.float64)
    x, y = torch.rand(2, 1, 10, 10, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="beta"):
        gdu(spec, p, x, y, beta=0.0, steps=3, free_steps=10)
    with pytest.raises(ValueError, match="estimator"):
        gdu(spec, p, x, y, beta=1e-3, steps=3, free_steps=10, estimator="random_sign")
