"""Low-precision EP: Brevitas-quantized networks, the bit-exact fixed-point model, and checked export.

* ``config``: the ``[quant]`` table (``QuantConfig``), free of Brevitas;
* ``quantizers``: the Brevitas quantizers, composed with ``.let``;
* ``network``: ``QuantEPNetwork``, Brevitas layers run by the engine's own dynamics (QAT on float shadows);
* ``fixed_point``: the integer-only relaxation, golden model for boards; ``weight_file``: its ``.epqw`` file;
* ``unrolled``: the free phase unrolled over T steps; ``export``: ONNX, QCDQ, QONNX and ``fixed`` exports,
  each checked against PyTorch before it is kept.
"""

import warnings

# Brevitas warns at import that an optional CUDA kernel package is missing; it is not used here.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
