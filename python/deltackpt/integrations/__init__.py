"""Optional integrations with training frameworks.

* :mod:`deltackpt.integrations.hf`: ``DeltackptCallback``, a ``transformers.TrainerCallback``.
* :mod:`deltackpt.integrations.lightning_io`: ``ChainCheckpointIO``, a Lightning ``CheckpointIO``.

Each submodule imports its framework when imported; this package imports neither.
"""
