"""Design-time tools: what turns a trained super-network into the level tables the runtime loads.

This is the left half of the paper's Fig. 2. It imports the runtime core (:mod:`dynamic_ofa_ros`)
and reuses its helpers; the core never imports it. Everything here runs offline, on the target
device (latency profiling) or on any machine (search, calibration, training, figures):

* per-operator latency look-up tables and their validation (``offline_tools.latency``);
* accuracy sources (:mod:`offline_tools.accuracy`), the architecture search
  (:mod:`offline_tools.search`), BN calibration into a level table (:mod:`offline_tools.calibrate`);
* image sources (:mod:`offline_tools.datasets`), figures (:mod:`offline_tools.plot`);
* super-network training (``offline_tools.training``) and the paper's experiments
  (``offline_tools.experiments``);
* the ``dofa-levels`` command line (``offline_tools.cli``).

Errors that only these tools raise are in :mod:`offline_tools.errors`.
"""
