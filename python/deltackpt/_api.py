"""Tensor encode / decode / inspect."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._tensors import Raw, check_reference, from_raw, is_torch, out_raw, to_raw, writable_host
from .errors import CorruptDataError, InvalidArgumentError, ReferenceMismatchError

QUANTIZERS = ("none", "exponent", "uniform", "lattice", "bounded")
CODERS = ("auto", "raw", "tans", "huffman", "lz77", "zstd", "gzip")


def encode(
    x: Any,
    *,
    reference: Any = None,
    quantizer: str | None = None,
    bits: int = 3,
    coder: str = "auto",
    bucket_value: str = "mean",
    symmetric: bool = True,
    dim: int = 3,
    iters: int = 400,
    seed: int = 0,
    bucket_floor: tuple[int, int | None] | None = None,
    reconstruction: Any = None,
    tolerance: float | None = None,
    rel_error: float | None = None,
    rel_tolerance: float | None = None,
    second_moment: Any = None,
    eps: float = 1e-8,
) -> bytes:
    """Compress a numpy array or torch tensor (float32/float64/float16/bfloat16) to bytes.

    With ``reference`` (same dtype and shape) the blob holds ``x - reference`` and
    :func:`decode` needs the same reference. ``quantizer="none"`` is lossless and bit-exact
    (with a reference the bit patterns are XORed, which is exact too); ``"exponent"`` (the
    default without an error bound) is LC-checkpoint's exponent-bucket quantizer with ``bits``
    (1-8) bits per element. ``bucket_value`` is ``"mean"`` (default: lowest squared error) or
    ``"midpoint"`` (as in the source paper). ``"uniform"`` quantizes the delta on 2^bits − 1
    levels centred on 0 (``symmetric=False``: affine, 2^bits levels); ``"lattice"`` cuts it into
    blocks of ``dim`` values quantized with Babai's nearest plane on a basis searched for this
    tensor (``iters`` perturbations, ``seed``; the basis is stored in the blob).
    ``bucket_floor`` ``(biased exponent, sign or None)`` stops the exponent quantizer from
    keeping buckets below a limit chosen elsewhere (see :func:`delta_histogram`).

    Error bounds (``quantizer="bounded"``, implied), guaranteed on what the encoder wrote:

    - ``tolerance=t``: every element ``|decode - x| <= t`` (``t = 0``: lossless);
    - ``rel_error=e``: ``||decode - x||_2 <= e * ||x||_2`` over the tensor (relative to ``x``
      itself, not to its delta);
    - ``rel_tolerance=r`` (``0 <= r < 1``): every element ``|decode - x| <= r * |x|``: zeros
      stay zero, no sign flips (for optimizer second moments);
    - ``tolerance=t, second_moment=v``: every element ``|decode - x| <= t * (sqrt(|v|) + eps)``
      (``v`` of the same dtype and shape, e.g. Adam's ``exp_avg_sq`` for its ``exp_avg``: the
      update ``m / (sqrt(v) + eps)`` moves by at most ``t`` per element); :func:`decode` needs
      the same ``v``;
    - ``tolerance=s`` with ``s`` an array or tensor of ``x``'s dtype and shape: every element
      ``|decode - x| <= |s|`` (per-element tolerances); :func:`decode` needs the same ``s``.

    :func:`inspect` reports the bound and the error the encoder measured.

    ``reconstruction`` (writable, contiguous, CPU, ``x``'s dtype and shape) receives what
    ``decode(blob, reference=reference)`` will return, computed while encoding (error feedback
    without a decode pass); it may be ``reference`` itself, then updated in place.
    """
    bound, bound_value, scale = _bound(tolerance, rel_error, rel_tolerance, second_moment)
    quantizer = _quantizer(quantizer, bound, bits)
    raw, ref, moment, out, in_place = _buffers(x, reference, scale, reconstruction)
    return _core.encode(
        raw.data,
        raw.dtype,
        raw.shape,
        ref,
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
        reconstruction=out,
        in_place=in_place,
        bound=bound,
        bound_value=bound_value,
        eps=eps,
        moment=moment,
    )


def _quantizer(quantizer: str | None, bound: str | None, bits: Any) -> str:
    """The quantizer of an encode: ``bounded`` exactly when an error bound is given."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 8:
        raise InvalidArgumentError(f"bits must be an integer in 1..8 (0 for none), not {bits!r}")
    if quantizer is None:
        return "exponent" if bound is None else "bounded"
    if bound is not None and quantizer != "bounded":
        raise InvalidArgumentError(
            f"an error bound (tolerance=, rel_error=, rel_tolerance=) needs quantizer='bounded' "
            f"(or no quantizer), not quantizer={quantizer!r}"
        )
    if quantizer == "bounded" and bound is None:
        raise InvalidArgumentError(
            "quantizer='bounded' needs a bound: tolerance=, rel_error= or rel_tolerance="
        )
    return quantizer


def _reference_of(raw: Raw, reference: Any) -> Raw | None:
    """The reference's bytes, checked to match the tensor (dtype and shape), or None."""
    if reference is None:
        return None
    ref = to_raw(reference, "reference")
    check_reference(raw, ref)
    return ref


def _buffers(
    x: Any, reference: Any, second_moment: Any, reconstruction: Any
) -> tuple[Raw, Any, Any, Any, bool]:
    """What an encode hands the core, each checked against ``x``: the tensor, the bytes of the
    reference, of the second moment and of the reconstruction, and whether the reconstruction
    is the reference (then updated in place, and not passed twice)."""
    raw = to_raw(x, "x")
    ref = _reference_of(raw, reference)
    moment = None if second_moment is None else _moment(second_moment, raw)
    out = None if reconstruction is None else out_raw(reconstruction, raw)
    in_place = out is not None and reconstruction is reference
    ref_data = None if ref is None or in_place else ref.data
    return raw, ref_data, moment, None if out is None else out.data, in_place


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_torch(x)


def _bound(
    tolerance: Any,
    rel_error: float | None,
    rel_tolerance: float | None,
    second_moment: Any,
) -> tuple[str | None, float, Any]:
    """The core's bound name and value from the keyword arguments (at most one bound), and
    the tensor the bound needs beside ``x`` (the second moment, per-element tolerances)."""
    if _is_array(tolerance):
        if second_moment is not None or rel_error is not None or rel_tolerance is not None:
            raise InvalidArgumentError("per-element tolerances (an array) take no other bound")
        return "each", 1.0, tolerance
    given = {
        k: v
        for k, v in (
            ("tolerance", tolerance),
            ("rel_error", rel_error),
            ("rel_tolerance", rel_tolerance),
        )
        if v is not None
    }
    if len(given) > 1:
        raise InvalidArgumentError(f"give one error bound, not {' and '.join(given)}")
    if second_moment is not None and tolerance is None:
        raise InvalidArgumentError("second_moment= scales tolerance=: give tolerance= too")
    if not given:
        return None, 0.0, None
    ((name, value),) = given.items()
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{name} must be a number, not {value!r}") from e
    kind = {"tolerance": "abs", "rel_error": "rel", "rel_tolerance": "pointwise"}[name]
    if second_moment is not None:
        kind = "moment"
    return kind, value, second_moment


def _moment(scale: Any, raw: Raw) -> Any:
    """The bytes of the second moment (or per-element tolerances), checked to match the
    tensor."""
    v = to_raw(scale, "second_moment")
    if v.dtype != raw.dtype or v.shape != raw.shape:
        raise ReferenceMismatchError(
            f"second_moment / tolerance is {v.dtype} {tuple(v.shape)} but the tensor is "
            f"{raw.dtype} {tuple(raw.shape)}: they must have the same dtype and shape"
        )
    return v.data


def delta_histogram(x: Any, reference: Any = None) -> Any:
    """Counts of the delta's (sign, biased exponent) keys: ``sign << E | exponent`` with E = 8
    bits for float32/float16/bfloat16 (computed in float32), 11 for float64."""
    raw = to_raw(x, "x")
    ref = _reference_of(raw, reference)
    return _core.delta_histogram(raw.data, raw.dtype, raw.shape, None if ref is None else ref.data)


def decode(
    blob: bytes,
    *,
    reference: Any = None,
    out: Any = None,
    second_moment: Any = None,
    tolerance: Any = None,
    max_output_bytes: int | None = None,
) -> Any:
    """Decompress a blob from :func:`encode` to the same kind (numpy or torch), dtype and shape.

    A blob encoded against a reference needs that exact reference (it is fingerprinted).
    Corrupt or truncated input raises :class:`CorruptDataError`.

    ``out``, a writable contiguous CPU array or tensor of the blob's dtype and shape, receives
    the result and is returned. It may be ``reference`` itself: the delta is then applied in
    place (a chain of deltas decoded without a buffer per link); if decoding fails, it holds
    unspecified values.

    ``second_moment``: the ``v`` a blob was bounded against (``tolerance=, second_moment=``);
    ``tolerance``: the per-element tolerances of a blob encoded with ``tolerance=<array>``.
    ``max_output_bytes``: for untrusted blobs, refuse (``CorruptDataError``) one that declares
    a larger tensor, before allocating anything (a 3 KB blob may legally declare gigabytes).
    """
    blob = _blob_bytes(blob)
    if max_output_bytes is not None:
        _check_size(blob, max_output_bytes)
    ref = None if reference is None else to_raw(reference, "reference")
    scale = second_moment if tolerance is None else tolerance
    moment = None if scale is None else to_raw(scale, "second_moment").data
    if out is not None:
        info = _core.inspect(blob)
        want = Raw(np.empty(0, np.uint8), info["dtype"], list(info["shape"]), 0)
        dst = out_raw(out, want, "out")
        in_place = out is reference
        _core.decode_into(
            blob,
            dst.data,
            None if ref is None or in_place else ref.data,
            in_place=in_place,
            moment=moment,
        )
        return out
    dtype, shape, tag, data = _core.decode(blob, None if ref is None else ref.data, moment)
    if ref is not None and (ref.dtype != dtype or ref.shape != list(shape)):
        raise ReferenceMismatchError(
            f"reference is {ref.dtype} {tuple(ref.shape)} but the blob holds {dtype} {tuple(shape)}"
        )
    return from_raw(data, dtype, list(shape), tag, like=ref)


def decode_chain(blobs: list[bytes], out: Any, clamp0: list[bool]) -> Any:
    """Apply the delta ``blobs`` in order to ``out`` in place, in one pass over it: ``out``
    holds the reference of the first blob and ends as :func:`decode` of the last, exactly as
    ``decode(b, reference=out, out=out)`` blob after blob would leave it, each followed by
    ``out.clamp_(min=0)`` where ``clamp0`` says so. Every blob's reference fingerprint is
    checked; on an error ``out`` holds unspecified values."""
    if not writable_host(out):
        raise InvalidArgumentError("out must be a writable, contiguous CPU array or tensor")
    raw = to_raw(out, "out")
    blobs = [_blob_bytes(b) for b in blobs]
    _core.decode_chain_update(blobs, [bool(c) for c in clamp0], raw.data, raw.dtype, raw.shape)
    return out


def inspect(blob: bytes) -> dict[str, Any]:
    """The blob's header: dtype, shape, quantizer, coder, bits, table, sizes (checksum verified)."""
    return dict(_core.inspect(_blob_bytes(blob)))


def _check_size(blob: bytes, limit: int) -> None:
    info = _core.inspect(blob)
    n = int(np.prod(info["shape"], dtype=object)) * np.dtype(_ITEMSIZE[info["dtype"]]).itemsize
    if n > limit:
        raise CorruptDataError(
            f"the blob declares a {info['dtype']} tensor of shape {list(info['shape'])} ({n} "
            f"bytes), more than max_output_bytes={limit}: refused as untrusted input"
        )


_ITEMSIZE = {"float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": "u2"}


def _blob_bytes(blob: Any) -> bytes:
    """A blob as ``bytes``: bytearray and memoryview are copied, anything else refused."""
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    raise InvalidArgumentError(
        f"a blob is bytes, bytearray or memoryview, not {type(blob).__name__}"
    )
