"""Diagnostics from the EP literature: EP updates against BPTT gradients (GDU), and the update's fidelity in a
reduced compute precision against float64 (``precision``)."""
