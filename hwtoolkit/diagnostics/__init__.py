"""Diagnostics from the EP literature: EP updates against BPTT gradients (GDU)."""
