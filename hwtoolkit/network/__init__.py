"""EP networks as pure math: specification, parameters, dynamics, energy, BPTT."""

from .activations import ACTIVATIONS, Activation, get_activation
from .dynamics import Relaxation, input_drive, iterate, relax, step
from .energy import ep_update, phase_grads, phi, phi_grads
from .parameters import check_parameters, init_parameters
from .spec import ConvLayer, LayerGeometry, NetworkSpec, SpecError

__all__ = [
    "ACTIVATIONS", "Activation", "ConvLayer", "LayerGeometry", "NetworkSpec", "Relaxation", "SpecError",
    "check_parameters", "ep_update", "get_activation", "init_parameters", "input_drive", "iterate",
    "phase_grads", "phi", "phi_grads", "relax", "step",
]
