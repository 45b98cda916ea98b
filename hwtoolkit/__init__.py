"""hwtoolkit: train Equilibrium Propagation networks on real and simulated hardware."""

__version__ = "0.1.0"
