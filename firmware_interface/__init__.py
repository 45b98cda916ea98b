"""The board protocol: its codec (COBS framing, CRC, tensors), the host client on pyserial, and the firmware.

* ``cobs``, ``frame``: framing on the wire, a stream receiver that resynchronises on ``0x00``;
* ``tensor``: the tensor encoding shared by payloads and the ``.epqw`` weight file;
* ``protocol``: command and status codes, the fixed payload records;
* ``client``: ``BoardClient``, one request in flight with timeouts, retries and the board's replay cache;
* ``faults``: a transport that drops, flips, duplicates, delays and splits bytes, for tests;
* ``launch``: builds and starts the reference firmware on a pty, loopback TCP or a QEMU Cortex-M3;
* ``firmware/``: the reference firmware in C (docs/board_protocol.md is the spec).
"""
