"""A chain of compressed training checkpoints: keyframes, multi-level anchors and steps.

Algorithm (SPEC 2.1, 2.4, 2.5)
-------------------------------
Every save is a *record*. Float tensors with at least 2 elements are delta-coded with error
feedback: the stored delta is ``d = u - r_base`` where ``r_base`` is the base record's
*reconstruction* (bit for bit what a reader decodes, never the true state ``u``), and the new
reconstruction is ``r = decode(blob, reference=r_base)``: the encoder writes it while coding
(``encode(..., reconstruction=)``), in place of ``r_base`` when this save drops that level.
Keyframes are lossless; anchors of level ``L`` every ``anchor_every**L`` saves are coded
against the latest reference of level ``>= L``, steps against the previous save, so a restore
applies ``1 + digit_sum(n, base=anchor_every)`` blobs per tensor. Every delta keeps an error
budget (:mod:`.policy`), or, with ``quantizer="exponent"``, LC-checkpoint's bits.

Exact storage: integer/bool tensors, float tensors with fewer than 2 elements, float tensors of
keyframes, and any float tensor whose coded blob would not be smaller than its raw bytes (tiny
biases; such a raw copy then starts that tensor's delta chain). Plain values (None, bool, int,
float, str, and lists/tuples/dicts of them) are stored as JSON.
Anything else is refused: nothing is pickled and loading never executes code.
Tensors named ``exp_avg_sq``/``max_exp_avg_sq`` are clamped at 0 after decoding (on both sides,
so writer and reader still agree bit for bit); tensors under an optimizer (an object with
``param_groups`` or a key containing ``optim``) or named like Adam/SGD moments use
``optimizer_bits``.

The rooms (docs/ARCHITECTURE.md draws them)
-------------------------------------------
:mod:`.snapshot` a state as tensor leaves and JSON values; :mod:`.config` the settings;
:mod:`.policy` which record a save becomes and how each tensor is coded (error budgets, or
bits and bucket floors); :mod:`.records` the record and schema formats and their file names;
:mod:`.references` the reconstructions the next delta is coded against; :mod:`.commit` one save
written atomically; :mod:`.groups` small tensors coded as one blob; :mod:`.restore` decoding
along base chains, with :mod:`.blobs` (one tensor's steps) and :mod:`.lockstep` (tied
tensors); :mod:`.branches` history, fork points, branch points; :mod:`.retention` what may
be deleted; :mod:`.inspect` depth, sizes, stats, verify; :mod:`.facade`
:class:`CheckpointChain` over them all. File layout and protocols: docs/CHAIN.md.
"""

from __future__ import annotations

from .facade import CheckpointChain

__all__ = ["CheckpointChain"]
