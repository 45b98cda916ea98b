"""Diagnostics from the EP literature: EP updates against BPTT gradients (GDU), the update's fidelity in a
reduced compute precision against float64 (``precision``), and a device's applied update against the ideal EP
update and BPTT (``fidelity``)."""
