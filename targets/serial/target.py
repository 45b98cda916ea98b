"""The serial target: EP with a board in the loop, over the board protocol (docs/board_protocol.md).

The host keeps the float shadow weights of a Brevitas power-of-two network (as the quantized reference target
does) and the board holds their integers. After every update the host quantizes the shadow weights again and
writes only the integer differences (APPLY_DELTA, each guarded by the weights version); a change of any
format configures the board afresh. Phases run on the board; the states it returns are the fixed-point
model's, bit for bit. A board that reboots is programmed again from the host's copy and the interrupted
operation is repeated, so no update is lost or applied twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch

from firmware_interface.client import BoardClient, BoardError, BoardLinkError, BoardResetError, BoardTimeout, \
    ProtocolError, StaleVersionError, tensor_crc
from firmware_interface.protocol import BETA_FRAC, BIAS, FEEDBACK, RESIDUAL, SCORES, W, Capability, Init, Phase, Snapshot, \
    Status, tensor_id
from firmware_interface.tensor import DTYPES, I32, U16
from hwtoolkit.network.dynamics import Relaxation
from hwtoolkit.network.flops import layer_macs
from hwtoolkit.network.spec import NetworkSpec

from ..base import Capabilities, Quantization, Start, Target, TargetError, Update, UpdateReport
from ..options import check_option, parse_quant
from .image import BoardImage, ImageError, board_image

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass
class LinkReport:
    """What the target did on the link (for the docs' throughput figures and for debugging)."""

    uploads: int = 0  # full programs: CONFIGURE and every tensor
    delta_requests: int = 0  # APPLY_DELTA(_PACKED) requests
    updates: int = 0
    resets_recovered: int = 0
    repairs: int = 0  # weights found different from the host's (CRC or version) and written again
    saturated: int = 0


@dataclass(frozen=True)
class SerialOptions:
    """How the host reaches the board, and the run's fixed-point ``[quant]`` table."""

    url: str = ""  # a device path (/dev/ttyACM0), a pty path, or socket://HOST:PORT
    baudrate: int = 115_200
    timeout: float = 0.5  # seconds; the client stretches it by the work a request asks for
    retries: int = 8
    max_batch: int = 0  # samples per RELAX (0 = the board's limit)
    verify_every: int = 0  # updates between CRC checks of every tensor (0 = never)
    max_recoveries: int = 3  # board resets survived per operation
    quant: Any = None  # a quantize.config.QuantConfig (or its table as a dict)
    client: Any = None  # an open BoardClient to use instead of opening url (tests, custom transports)

    def __post_init__(self) -> None:
        check_option("baudrate", self.baudrate, 50, 50_000_000, integer=True)
        check_option("timeout", self.timeout, 0, 3600, low_open=True)
        check_option("retries", self.retries, 0, 1000, integer=True)
        check_option("max_batch", self.max_batch, 0, 65_536, integer=True)  # 0: the board's own limit
        check_option("verify_every", self.verify_every, 0, 1_000_000_000, integer=True)  # 0: never
        check_option("max_recoveries", self.max_recoveries, 0, 1000, integer=True)
        if self.client is not None and not isinstance(self.client, BoardClient):
            raise TargetError(f"target.client = {self.client!r} is invalid: expected a BoardClient")
        if self.client is None and not self.url:
            raise TargetError("target.url is required for the serial target: a device path (/dev/ttyACM0), a pty "
                              "path, or socket://127.0.0.1:PORT")
        object.__setattr__(self, "quant", parse_quant(self.quant))


class SerialTarget(Target):
    """A board that runs the fixed-point network, driven over a serial link (``target.url``)."""

    description = ("a board over a serial link running the fixed-point network (options: url = a device path, "
                   "pty path or socket://HOST:PORT; baudrate, timeout, retries, max_batch, verify_every, "
                   "max_recoveries; needs a [quant] table with weight_bits, state_bits and scale = \"pow2\")")
    Options = SerialOptions
    quantization = Quantization.FIXED_POINT
    reconnect_options = ("url", "baudrate", "timeout", "retries")  # a relaunched board may have a new address

    def __init__(self, spec: NetworkSpec, options: SerialOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(spec, options, **kwargs)
        opts = self.options
        self.check_quant(opts.quant)
        self.quant, self._fp = self._open_quant(spec, opts.quant)
        client = opts.client
        self.url = opts.url or _port_name(client.port)
        if client is None:
            try:
                client = BoardClient.open(opts.url, baudrate=opts.baudrate, timeout=opts.timeout,
                                          retries=opts.retries)
            except (ConnectionError, BoardTimeout, BoardError, ProtocolError, ValueError) as e:
                raise TargetError(f"target.url = {opts.url!r}: no board answered HELLO: {e}") from None
        elif client.info is None:
            client.hello()
        self.client = client
        self.info = client.info
        self.max_batch = min(self.info.max_batch, opts.max_batch or self.info.max_batch)
        self.verify_every, self.max_recoveries = opts.verify_every, opts.max_recoveries
        self.report = LinkReport()
        self._check_board()
        self._image: BoardImage | None = None
        self._version = random.getrandbits(32)  # weights versions are never reused, not even across sessions
        self._lost = False
        self._input: np.ndarray | None = None  # the input integers on the board (one chunk)
        self._labels: np.ndarray | None = None
        self._free: Relaxation | None = None  # the phase whose states are the board's FREE snapshot
        self._last_on_board = False  # the board's current states are self._last's
        shape = tuple(spec.input_shape)  # an image's rows: the packed inputs' two-dimensional predictor
        self._input_width = int(shape[-1]) if len(shape) > 1 and shape[-1] <= 0xFFFF else 0

    @staticmethod
    def _open_quant(spec: NetworkSpec, cfg):
        from quantize.fixed_point import FixedPointError, FixedPointNetwork
        from quantize.network import QuantEPNetwork

        net = QuantEPNetwork(spec, cfg)
        try:
            fp = FixedPointNetwork.from_quant(net)
            board_image(fp, 1)
        except (FixedPointError, ImageError) as e:
            raise TargetError(f"the serial target cannot hold {spec.describe()}: {e}") from None
        return net, fp

    def _check_board(self) -> None:
        info, spec, cfg = self.info, self.spec, self.quant.cfg
        caps = info.capabilities
        needs = [(not spec.tied, Capability.UNTIED, "untied feedback weights"),
                 (spec.update == "alternating", Capability.ALTERNATING, "the alternating schedule"),
                 (spec.output == "ce", Capability.CE_READOUT, "a CE readout"),
                 (spec.output == "mse", Capability.MSE_NUDGE, "the MSE nudge"),
                 (bool(spec.conv), Capability.CONV, "conv layers (capability 9, protocol 1.2)")]
        for needed, bit, what in needs:
            if needed and not caps & bit:
                raise TargetError(f"the board at {self.url} does not support {what} ({info.describe()})")
        if spec.classes > 256:
            raise TargetError(f"network.classes = {spec.classes}: the board protocol carries labels as u8 (at "
                              f"most 256 classes)")
        widest = max(math.prod(g.out_shape) for g in spec.layers)
        inputs = math.prod(spec.input_shape)
        limits = [(spec.num_state_layers, info.max_layers, "state layers"),
                  (widest, info.max_units, "units in a layer"),
                  (inputs, info.max_units, "inputs"),
                  (inputs * (1 if cfg.input_bits <= 8 else 2) + 11, info.max_payload,
                   "bytes for one input row in a payload"),
                  (widest * (1 if cfg.state_bits <= 8 else 2) + 11, info.max_payload,
                   "bytes for one row of states in a payload"),
                  (spec.classes * 4 + 7 if spec.output == "ce" else 0, info.max_payload,
                   "bytes for one row of class scores in a payload"),
                  (cfg.weight_bits, info.max_weight_bits, "weight bits"),
                  (cfg.state_bits, info.max_state_bits, "state bits"),
                  (cfg.input_bits, info.max_input_bits, "input bits")]
        for value, limit, what in limits:
            if value > limit:
                raise TargetError(f"the network needs {value} {what}; the board at {self.url} allows {limit}")

    @property
    def capabilities(self) -> Capabilities:
        caps = self.info.capabilities
        return Capabilities(name=self.name, device="cpu", dtype="float32", exact=False,
                            conv=bool(caps & Capability.CONV),
                            untied=bool(caps & Capability.UNTIED), max_steps=self.info.max_steps, address=self.url,
                            notes=f"fixed point {self.quant.cfg.describe()}; board: {self.info.describe()}")

    # -- the link, with recovery from board resets ----------------------------------------------------------

    def _run(self, operation: Callable[[], R]) -> R:
        """Run a board operation; after a reset, program the board again from the host's copy and repeat it."""
        for attempt in range(self.max_recoveries + 1):
            try:
                if self._lost:
                    self._restore()
                return operation()
            except BoardResetError as e:
                self._lost = True
                if attempt == self.max_recoveries:
                    raise TargetError(f"the board at {self.url} kept resetting ({attempt + 1} times): {e}") from None
                log.warning("board at %s reset (%s); programming it again from the host's weights", self.url, e)
                self.report.resets_recovered += 1
            except (BoardTimeout, BoardLinkError) as e:
                raise TargetError(f"the board at {self.url} stopped answering: {e}. The host's weights are intact; "
                                  f"resume the run with --resume once the board is back") from None
            except (BoardError, ProtocolError) as e:
                raise TargetError(f"board at {self.url}: {e}") from None
        raise AssertionError("unreachable")

    def _restore(self) -> None:
        self.info = self.client.hello()
        self._forget_board_state()
        if self._image is not None:
            self._upload(self._image)
        self._lost = False

    def _forget_board_state(self) -> None:
        self._input = self._labels = None
        self._free = None
        self._last_on_board = False

    # -- weights ------------------------------------------------------------------------------------------

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.quant.load_shadow(weights)
        self._run(lambda: self._sync(full=True))

    def _read_weights(self) -> dict[str, torch.Tensor]:
        """The host's float shadow weights (what checkpoints hold); ``board_weights`` reads the board's integers."""
        return {n: t.detach().clone() for n, t in self.quant.shadow().items()}

    def _apply_update(self, update: Update) -> UpdateReport:
        shadow = self.quant.shadow()
        for n, d in update.delta.items():
            shadow[n].add_(d.to(shadow[n].device, shadow[n].dtype))
        before = self.report.saturated
        self._run(lambda: self._sync(full=False))
        self.report.updates += 1
        if self.verify_every and self.report.updates % self.verify_every == 0:
            self._run(self._verify_or_repair)
        return UpdateReport(saturated=self.report.saturated - before, details={"version": self._version})

    def _sync(self, full: bool) -> None:
        """Bring the board to the shadow weights' integers: a full program, or the integer differences."""
        from quantize.fixed_point import FixedPointNetwork

        fp = FixedPointNetwork.from_quant(self.quant)
        try:
            image = board_image(fp, self.max_batch, bool(self.info.capabilities & Capability.CE_NUDGE))
        except ImageError as e:
            raise TargetError(f"the weights do not fit the board protocol: {e}") from None
        if fp.accumulator_bits > self.info.accumulator_bits:
            raise TargetError(f"the weights need a {fp.accumulator_bits}-bit accumulator; the board at {self.url} "
                              f"has {self.info.accumulator_bits} bits")
        if full or self._image is None or image.formats() != self._image.formats():
            self._upload(image)
        else:
            try:
                self._write_differences(image)
            except StaleVersionError as e:
                log.warning("board at %s holds weights version %d, the host expected %d; writing every weight",
                            self.url, e.board_version, self._version)
                self.report.repairs += 1
                self._upload(image)
        self._fp, self._image = fp, image

    def _upload(self, image: BoardImage) -> None:
        self._image = image  # a reset during the upload repeats it from here
        try:
            self.client.configure(image.record.pack())
        except BoardError as e:
            hint = (f"; lower target.max_batch (now {self.max_batch})" if e.status == Status.NO_MEMORY else "")
            raise TargetError(f"the board at {self.url} refused the network {self.spec.describe()}: {e}{hint}") \
                from None
        version = self._next_version()
        for tid, (values, code) in sorted(image.tensors.items()):
            self.client.write_tensor(tid, values, code)
            self.client.commit_tensor(tid, values, code, version)
        self._version = version
        self._forget_board_state()
        self.report.uploads += 1

    def _next_version(self) -> int:
        """A weights version never used before: past every version an APPLY_DELTA may have produced, even one
        whose answer was lost in a reset (modulo 2^32)."""
        used = self.client.last_delta_version
        ahead = used is not None and (used - self._version) % 2**32 < 2**31
        return ((used if ahead else self._version) + 1) & 0xFFFFFFFF

    def _write_differences(self, image: BoardImage) -> None:
        parts = []
        for tid in image.weight_ids:
            new, code = image.tensors[tid]
            diff = new.astype(np.int64) - self._image.tensors[tid][0].astype(np.int64)
            info = np.iinfo(DTYPES[code])
            while diff.any():  # an increment beyond the wire dtype goes in parts, each within the weight range
                part = np.clip(diff, info.min, info.max)
                parts.append((tid, part, code))
                diff -= part
        requests = self.client.stats.requests
        saturated, self._version = self.client.apply_deltas(parts, self._version)
        self.report.delta_requests += self.client.stats.requests - requests
        self.report.saturated += saturated
        self._image = dataclasses.replace(self._image, tensors={
            **self._image.tensors, **{tid: image.tensors[tid] for tid in image.weight_ids}})

    @property
    def image(self) -> BoardImage | None:
        """What the host last wrote to the board: the network record and its integer tensors."""
        return self._image

    @property
    def fixed_point(self):
        """The fixed-point network (``quantize.fixed_point.FixedPointNetwork``) the board runs."""
        return self._fp

    def verify(self) -> list[int]:
        """Ids of the tensors whose CRC on the board differs from the host's (empty when all agree)."""
        return self._run(self._mismatches)

    def _mismatches(self) -> list[int]:
        self._require_weights()
        bad = []
        for tid, (values, code) in sorted(self._image.tensors.items()):
            crc, version = self.client.tensor_crc(tid)
            if crc != tensor_crc(values, code) or version != self._version:
                bad.append(tid)
        return bad

    def _verify_or_repair(self) -> None:
        bad = self._mismatches()
        if bad:
            log.warning("board at %s: tensors %s differ from the host's; writing every weight", self.url, bad)
            self.report.repairs += 1
            self._upload(self._image)

    def board_weights(self) -> dict[str, torch.Tensor]:
        """The weights the board really holds, read back and dequantized (``value = int * 2^-frac``)."""
        self._require_weights()

        def read() -> dict[str, torch.Tensor]:
            out = {}
            for name, fixed in self._fp.params.items():
                tid = _tensor_id_of(self.spec, name)
                _, code = self._image.tensors[tid]
                ints = torch.from_numpy(self.client.read_tensor(tid, fixed.data.numel(), code).astype(np.int64))
                frac = fixed.frac if fixed.frac.dim() == 0 else fixed.frac.view(-1, *([1] * (fixed.data.dim() - 1)))
                out[name] = (ints.view(fixed.data.shape).double() * torch.pow(2.0, -frac.double())).float()
            return out
        return self._run(read)

    # -- phases -------------------------------------------------------------------------------------------

    def _relax(self, x: torch.Tensor, steps: int, beta: float, y: torch.Tensor | None, start: Start,
               stop_tolerance: float) -> Relaxation:
        if beta != 0.0:
            if self.spec.output == "ce" and not self.info.capabilities & Capability.CE_NUDGE:
                raise TargetError(f"a nudged phase of a CE network needs a board with the CE nudge (capability "
                                  f"8, the integer softmax); the board at {self.url} has none ({self.info.describe()})")
            if not 1 <= abs(round(beta * (1 << BETA_FRAC))) < 2**31:
                raise TargetError(f"beta = {beta} is invalid on a board: it travels as round(beta * 2^16) in an "
                                  f"i32, which must not be 0 (|beta| > 2^-17 and < 2^15)")
        if stop_tolerance and not self.info.capabilities & Capability.EARLY_STOP:
            raise TargetError(f"stop_tolerance = {stop_tolerance}: the board at {self.url} cannot end a phase early")
        x_int = self._fp.encode_input(x.detach().cpu().float()).numpy()
        labels = None if y is None else y.detach().cpu().numpy().astype(np.uint8)
        batch = x_int.shape[0]
        single = batch <= self.max_batch
        mode, source, states = self._initial_states(start, batch, single)
        tolerance = min(math.floor(stop_tolerance * 2 ** self._image.state_frac), 0xFFFFFFFE) \
            if stop_tolerance else None
        parts = []
        for start in range(0, batch, self.max_batch):
            rows = slice(start, start + self.max_batch)
            chunk_states = None if states is None else [s[rows] for s in states]
            parts.append(self._run(lambda: self._relax_chunk(
                x_int[rows], None if labels is None else labels[rows], steps, beta, mode, source, chunk_states,
                tolerance)))
        result = self._assemble(parts)
        self._last_on_board = single
        if beta == 0.0 and single:
            self._free = result
        return result

    def _initial_states(self, start: Start, batch: int, single: bool
                        ) -> tuple[Init, Relaxation | None, list[np.ndarray] | None]:
        """Where a phase starts: ``(mode, the phase whose states the board may still hold, host states)``.

        The board starts from its own snapshot when it holds the states asked for; otherwise (another chunk,
        a reset since) the host writes them, quantized to the state format.
        """
        if start is None:
            return Init.ZERO, None, None
        mode = Init.FREE if isinstance(start, Relaxation) and start is self._free else Init.KEEP
        states = start.states if isinstance(start, Relaxation) else start
        smax = (1 << self._fp.state_bits) - 1
        scale = 2 ** self._image.state_frac
        host = [torch.round(s.detach().cpu().double() * scale).clamp(0, smax).long().flatten(1).numpy()
                for s in states]
        source = start if single and isinstance(start, Relaxation) else None
        return mode, source, host

    def _on_board(self, mode: Init, source: Relaxation | None) -> bool:
        """Whether the board still holds the states ``source`` ended with, where ``mode`` finds them."""
        if source is None:
            return False
        if mode == Init.FREE:
            return self._free is source
        return self._last is source and self._last_on_board

    def _relax_chunk(self, x_int: np.ndarray, labels: np.ndarray | None, steps: int, beta: float, mode: Init,
                     source: Relaxation | None, states: list[np.ndarray] | None, tolerance: int | None) -> tuple:
        client, image = self.client, self._image
        if self._input is None or self._input.shape != x_int.shape or not np.array_equal(self._input, x_int):
            self._input = None
            client.set_input(x_int, image.input_code, width=self._input_width)
            self._input = x_int
        if labels is not None and (self._labels is None or not np.array_equal(self._labels, labels)):
            self._labels = None
            client.set_target(labels)
            self._labels = labels
        if states is not None and not self._on_board(mode, source):
            if not self.info.capabilities & Capability.SET_STATES:
                raise TargetError(f"the board at {self.url} cannot take states from the host (SET_STATES), which "
                                  f"this phase's init needs")
            for layer, layer_states in enumerate(states, start=1):
                client.set_states(layer, layer_states, image.state_code)
            mode = Init.KEEP
        self._last_on_board = False
        if beta == 0:
            self._free = None  # the board's FREE snapshot is about to be overwritten
        phase = Phase.FREE if beta == 0 else (Phase.PLUS if beta > 0 else Phase.MINUS)
        done = client.relax(phase, mode, steps, round(beta * (1 << BETA_FRAC)), tolerance,
                            compute=self._relax_seconds(x_int.shape[0], steps))
        n = x_int.shape[0]
        ended = [client.read_states(Snapshot.CURRENT, layer, n, record.units, image.state_code)
                 for layer, record in enumerate(image.record.layers, start=1)]
        scores = (client.read_states(Snapshot.CURRENT, SCORES, n, image.record.classes, I32)
                  if image.record.classes else None)
        residual = client.read_states(Snapshot.CURRENT, RESIDUAL, n, 1, U16)[:, 0]
        return ended, scores, residual, done.steps

    def _relax_seconds(self, batch: int, steps: int) -> float:
        """The board's expected compute time for a phase (from HELLO's ns per multiply-accumulate), x4.

        A step runs every layer above the first forward and back, a max-pooled conv layer's conv once more (for
        its pool positions), and the readout; layer 1's drive runs once per input.
        """
        layers = self.spec.layers
        per_step = sum(2 * layer_macs(g) for g in layers[1:]) + sum(
            layer_macs(g) for g in layers[1:] if g.kind == "conv" and g.conv.pool == "max")
        per_step += self._image.record.classes * math.prod(layers[-1].out_shape)
        macs = batch * (steps * per_step + layer_macs(layers[0]))
        return 4 * macs * self.info.ns_per_mac * 1e-9

    def _assemble(self, parts: list[tuple]) -> Relaxation:
        scale = 2.0 ** -self._image.state_frac
        states = tuple(
            torch.from_numpy(np.concatenate([p[0][i] for p in parts]).astype(np.float32)).mul_(scale)
            .view(-1, *shape) for i, shape in enumerate(self.spec.state_shapes))
        if parts[0][1] is not None:
            scores = np.concatenate([p[1] for p in parts]).astype(np.float64) * 2.0 ** -self._image.score_frac
            logits = torch.from_numpy(scores).float()
        else:
            logits = states[-1].flatten(1).clone()
        residual = torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.float32)).mul_(scale)
        return Relaxation(states, logits, max(p[3] for p in parts), residual)

    def close(self) -> None:
        self.client.close()


def _port_name(port: object) -> str:
    """The device path of a port, looking through wrappers (``FaultyPort``) to the serial port inside."""
    while not isinstance(getattr(port, "port", None), (str, type(None))):
        port = port.port
    return getattr(port, "port", None) or "the given client's port"


def _tensor_id_of(spec: NetworkSpec, name: str) -> int:
    """The board's tensor id of parameter ``name`` (``w2``, ``b2``, ``fb2``, ``w_out``, ``b_out``)."""
    if name.endswith("_out"):
        return tensor_id(spec.num_state_layers + 1, W if name[0] == "w" else BIAS)
    slot = {"w": W, "b": BIAS, "fb": FEEDBACK}[name.rstrip("0123456789")]
    return tensor_id(int(name.lstrip("wbf")), slot)
