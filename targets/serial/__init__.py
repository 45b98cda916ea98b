"""The serial-board target: an EP network in fixed point on a board behind a serial link (docs/serial.md)."""
