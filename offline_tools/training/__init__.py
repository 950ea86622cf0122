"""Training the embedded OFA MobileNetV3 super-network on Imagenette (design time, one GPU run).

The network is the ImageNet super-network's architecture (``ofa_mbv3_d234_e346_k357_w1.2``:
width 1.2, kernel {3,5,7}, expand {3,4,6}, depth {2,3,4}, 1000-class head); the 10 Imagenette
classes are trained as their ImageNet-1k indices, so predictions are ImageNet labels.

Pipeline (:func:`offline_tools.training.pipeline.train_supernet`; every stage writes into the
output folder, and a failing stage never loses the earlier ones):

1. **data** (:mod:`.data`) -- the training zips are decoded once into one ``uint8`` tensor
   ``N x 3 x 128 x 128`` on the device; a seeded, class-stratified split holds out
   ``holdout_images`` (never trained on; the search measures accuracy on them) and designates
   ``calib_images`` other training images for BN calibration (``split.json``).
2. **train** (:mod:`.loop`) -- sandwich rule with in-place distillation: per step the largest
   sub-network learns from the labels (label smoothing), the smallest and ``n_random_subnets``
   random ones from the largest's soft outputs; kernel, expand, depth and resolution are all
   elastic. One resolution per step, augmentation on the device, NCHW, bf16 autocast on CUDA.
   The LR schedule (warm-up + cosine) runs over the planned epochs but is *time-aware*: progress
   is ``max(step fraction, time fraction)``, so when the wall clock would overrun the budget the
   cosine still reaches its end and the run stops early (recorded) instead of dying.
3. **final** -- weights are rounded to fp16 (the shipped precision), BN is recalibrated per
   sub-network, hold-out top-1 of a few reference sub-networks is recorded (:mod:`.measure`).
4. **export** -- fp16 safetensors shards (<= ``shard_mb``) + ``manifest.json`` (:mod:`.export`).
5. **measure** -- BN recalibration + hold-out top-1 of a structured sweep and N seeded random
   sub-networks, within the remaining time -> ``subnet_accuracy.json`` (:mod:`.measure`).

A run longer than one call (``--checkpoint-dir``, ``--resume``; :mod:`.checkpoint`): the cosine
is then step-based over the planned epochs in every call (one schedule across calls), the time
budget only ends a call, and each call writes an atomic safetensors + JSON checkpoint when training
stops; see "Training longer than one call" in ``docs/training.md``.

Modules: :mod:`.config` (TrainConfig), :mod:`.context` (clock, event log, shared run state),
:mod:`.data`, :mod:`.model`, :mod:`.checkpoint`, :mod:`.loop`, :mod:`.measure`, :mod:`.export`,
:mod:`.pipeline` (the stages in order) and :mod:`.cli` (the command line;
``offline_tools/train_supernet.py`` and ``dofa-levels train`` use it).
"""
