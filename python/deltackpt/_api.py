"""Tensor encode / decode / inspect."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._tensors import Raw, check_reference, from_raw, out_raw, to_raw

QUANTIZERS = ("none", "exponent", "uniform", "lattice")
CODERS = ("auto", "raw", "tans", "huffman", "lz77", "zstd", "gzip")


def encode(
    x: Any,
    *,
    reference: Any = None,
    quantizer: str = "exponent",
    bits: int = 3,
    coder: str = "auto",
    bucket_value: str = "mean",
    symmetric: bool = True,
    dim: int = 3,
    iters: int = 400,
    seed: int = 0,
    bucket_floor: tuple[int, int | None] | None = None,
    reconstruction: Any = None,
) -> bytes:
    """Compress a numpy array or torch tensor (float32/float64/float16/bfloat16) to bytes.

    With ``reference`` (same dtype and shape) the blob holds ``x - reference`` and
    :func:`decode` needs the same reference. ``quantizer="none"`` is lossless and bit-exact
    (with a reference the bit patterns are XORed, which is exact too); ``"exponent"`` is
    LC-checkpoint's exponent-bucket quantizer with ``bits`` (1-8) bits per element.
    ``bucket_value`` is ``"mean"`` (default: lowest squared error) or ``"midpoint"`` (as in
    the source paper). ``"uniform"`` quantizes the delta on 2^bits − 1 levels centred on 0
    (``symmetric=False``: affine, 2^bits levels); ``"lattice"`` cuts it into blocks of ``dim``
    values quantized with Babai's nearest plane on a basis searched for this tensor
    (``iters`` perturbations, ``seed``; the basis is stored in the blob). ``bucket_floor``
    ``(biased exponent, sign or None)`` stops the exponent quantizer from keeping buckets below
    a limit chosen elsewhere (the chain chooses it over a whole state, see
    :func:`delta_histogram`).

    ``reconstruction``, a writable contiguous CPU array or tensor of ``x``'s dtype and shape,
    receives exactly what ``decode(blob, reference=reference)`` will return (the state to carry
    forward for error feedback), computed in the encoding pass rather than by decoding. It may
    be ``reference`` itself: the reference is then updated in place (no second buffer).
    """
    raw = to_raw(x, "x")
    ref = None
    if reference is not None:
        ref = to_raw(reference, "reference")
        check_reference(raw, ref)
    out = None if reconstruction is None else out_raw(reconstruction, raw)
    in_place = out is not None and reconstruction is reference
    return _core.encode(
        raw.data,
        raw.dtype,
        raw.shape,
        None if ref is None or in_place else ref.data,
        quantizer=quantizer,
        bits=bits,
        coder=coder,
        bucket_value=bucket_value,
        tag=raw.tag,
        symmetric=symmetric,
        dim=dim,
        lattice_iters=iters,
        seed=seed,
        floor_exponent=None if bucket_floor is None else bucket_floor[0],
        floor_sign=None if bucket_floor is None else bucket_floor[1],
        reconstruction=None if out is None else out.data,
        in_place=in_place,
    )


def delta_histogram(x: Any, reference: Any = None) -> Any:
    """Counts of the delta's (sign, biased exponent) keys: ``sign << E | exponent`` with E = 8
    bits for float32/float16/bfloat16 (computed in float32), 11 for float64."""
    raw = to_raw(x, "x")
    ref = None
    if reference is not None:
        ref = to_raw(reference, "reference")
        check_reference(raw, ref)
    return _core.delta_histogram(raw.data, raw.dtype, raw.shape, None if ref is None else ref.data)


def decode(blob: bytes, *, reference: Any = None, out: Any = None) -> Any:
    """Decompress a blob from :func:`encode` to the same kind (numpy or torch), dtype and shape.

    A blob encoded against a reference needs that exact reference (it is fingerprinted).
    Corrupt or truncated input raises :class:`CorruptDataError`.

    ``out``, a writable contiguous CPU array or tensor of the blob's dtype and shape, receives
    the result and is returned. It may be ``reference`` itself: the delta is then applied in
    place (a chain of deltas decoded without a buffer per link); if decoding fails, it holds
    unspecified values.
    """
    ref = None if reference is None else to_raw(reference, "reference")
    if out is not None:
        info = _core.inspect(blob)
        want = Raw(np.empty(0, np.uint8), info["dtype"], list(info["shape"]), 0)
        dst = out_raw(out, want, "out")
        in_place = out is reference
        _core.decode_into(
            blob, dst.data, None if ref is None or in_place else ref.data, in_place=in_place
        )
        return out
    dtype, shape, tag, data = _core.decode(blob, None if ref is None else ref.data)
    if ref is not None and (ref.dtype != dtype or ref.shape != list(shape)):
        from .errors import ReferenceMismatchError

        raise ReferenceMismatchError(
            f"reference is {ref.dtype} {tuple(ref.shape)} but the blob holds {dtype} {tuple(shape)}"
        )
    return from_raw(data, dtype, list(shape), tag, like=ref)


def inspect(blob: bytes) -> dict[str, Any]:
    """The blob's header: dtype, shape, quantizer, coder, bits, table, sizes (checksum verified)."""
    return dict(_core.inspect(blob))
