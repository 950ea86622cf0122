"""Per-operator latency look-up tables for the OFA MobileNetV3 super-network.

A *latency table* gives, for every input resolution, the measured latency of every operator a
sub-network of ``ofa_mbv3_d234_e346_k357_w1.2`` can contain (the stem convolution, each possible
inverted-residual block, the head). The predicted latency of a sub-network is the sum of its
operators' mean latencies, as in OFA (``MBv3LatencyTable``) and the Dynamic-OFA paper.

Keys follow OFA's format, with the width-1.2 channel counts, e.g.::

    Conv-input:224x224x3-output:112x112x24
    expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:1-hs:0
    Conv_1-input:7x7x192-output:7x7x1152
    AvgPool2D-input:7x7x1152-output:1x1x1152
    Conv_2-input:1x1x1152-output:1x1x1536
    Logits-input:1x1x1536-output:1000

Modules (import them directly; this package module imports nothing):

* :mod:`~offline_tools.latency.geometry` — ``OperatorSpec`` (one key), ``MobileNetV3Geometry``
  (the operators of a sub-network or a search space); torch-free.
* :mod:`~offline_tools.latency.table` — ``LatencyTable`` (read OFA YAML/JSON, predict, save),
  ``OperatorStats``, ``LatencyCorrection`` / ``fit_correction``, ``summarize_samples``; torch-free.
* :mod:`~offline_tools.latency.runners` — timing machinery (runners per execution mode, clocks,
  the CPU allocator, interleaved passes); torch.
* :mod:`~offline_tools.latency.compiled` — timing in a compiled backend (OpenVINO, ONNX
  Runtime): operators and sub-networks exported to ONNX and compiled as the runtime compiles a
  level (``CompiledRunner``, ``CompiledSettings``, the operator layout).
* :mod:`~offline_tools.latency.profile` — ``profile_latency_table``: time every operator
  standalone on this device, in an execution backend (``execution_setup``).
* :mod:`~offline_tools.latency.validate` — ``measure_subnets`` and ``validate_latency_table``:
  sub-networks end to end, in the table's backend, against the table's prediction, fitting a
  correction.

The command line is ``dofa-levels profile`` / ``dofa-levels validate-latency``
(:mod:`offline_tools.cli.latency`).
"""
