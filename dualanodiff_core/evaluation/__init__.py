"""``dualanodiff evaluate``: does generated defect data help a detector?

Trains the same DRAEM-style discriminative U-Net once per training set (each synthetic set, and the
two baselines a sceptic tries first: the few real shots alone, and crop-and-paste of those shots onto
normal images), scores a held-out test split and reports localization and detection metrics side by
side. Modules, one job each:

- :mod:`.metrics` pixel/image AUROC, AP, F1-max and AU-PRO (vectorised torch, exact, tie-aware)
- :mod:`.detector` the discriminative U-Net and its focal loss
- :mod:`.images` reading images and masks at the evaluation resolution
- :mod:`.split` the test split of an MVTec category or of two folders (never overlaps the shots)
- :mod:`.synthetic_sets` finding and checking the pairs of a folder written by ``generate`` or Save Dataset
- :mod:`.sources` pools of pairs in memory; :mod:`.baselines` real-only and crop-and-paste samples
- :mod:`.loading` from checked files to tensors and training sets
- :mod:`.training` one detector: training, checkpoint selection, scoring the test set
- :mod:`.run` every set x seed, resumable; :mod:`.scoring` metrics per defect type and category
- :mod:`.report`, :mod:`.figures`, :mod:`.saved_maps` what is written
- :mod:`.generation_metrics` (with :mod:`.lpips_vgg`, :mod:`.inception`) IC-LPIPS and IS from local weights
- :mod:`.cli_args` the command line; :mod:`.demo_world_eval` the same evaluation in the demo's toy world
"""
