"""The FPGA reference design: the RTL core (rtl/), its memory layout and cycle model, the synthesis reports
and the fpga-sim glue (docs/fpga.md)."""
