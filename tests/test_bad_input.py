"""Behaviour on bad input: every decoder is total, errors are typed and say what to do."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

import deltackpt as dk

RNG = np.random.default_rng(7)
X = (RNG.standard_normal(3000) * 0.01).astype(np.float32)
REF = (RNG.standard_normal(3000) * 0.01).astype(np.float32)
BLOBS = [
    dk.encode(X),
    dk.encode(X, quantizer="none"),
    dk.encode(X, reference=REF, bits=4),
    dk.encode(X.astype(np.float16), quantizer="none"),
]


def reseal(body: bytes) -> bytes:
    """Recompute the trailing checksum, as a forger would."""
    return body + xxhash.xxh3_64_intdigest(body).to_bytes(8, "little")


def try_decode(blob: bytes, reference=None):
    try:
        return dk.decode(blob, reference=reference)
    except dk.CorruptDataError:
        return None


@given(which=st.integers(0, len(BLOBS) - 1), data=st.data())
def test_mutated_blobs_raise_corrupt_data_error(which, data):
    blob = bytearray(BLOBS[which])
    ref = REF if which == 2 else None
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    with pytest.raises(dk.CorruptDataError):
        dk.decode(bytes(blob), reference=ref)


@given(which=st.integers(0, len(BLOBS) - 1), data=st.data())
def test_forged_blobs_with_valid_checksum_never_crash(which, data):
    """Past the checksum, the parser and decoders must still be total."""
    body = bytearray(BLOBS[which][:-8])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    ref = REF if which == 2 else None
    try:
        out = dk.decode(reseal(bytes(body)), reference=ref)
    except (dk.CorruptDataError, dk.UnsupportedError):
        return
    assert isinstance(out, np.ndarray)


@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    with pytest.raises(dk.CorruptDataError):
        dk.decode(data)
    with pytest.raises(dk.DeltackptError):
        dk.codec.decode(data)


def test_unknown_version_is_unsupported():
    body = bytearray(BLOBS[0][:-8])
    body[4] = 99
    with pytest.raises(dk.UnsupportedError, match="version 99"):
        dk.decode(reseal(bytes(body)))


def test_reference_errors_are_value_errors():
    blob = BLOBS[2]
    with pytest.raises(dk.ReferenceMismatchError, match="pass the reference"):
        dk.decode(blob)
    with pytest.raises(ValueError, match="differs"):
        dk.decode(blob, reference=REF + np.float32(1))
    with pytest.raises(dk.ReferenceMismatchError):
        dk.decode(blob, reference=REF[:100])
    with pytest.raises(dk.ReferenceMismatchError):
        dk.decode(blob, reference=REF.astype(np.float64))
    with pytest.raises(dk.ReferenceMismatchError, match="without a reference"):
        dk.decode(BLOBS[0], reference=REF)
    with pytest.raises(ValueError, match="same dtype and shape"):
        dk.encode(X, reference=REF[:10])


def test_non_finite_lossy_encode_reports_count_and_index():
    x = np.ones(100, np.float32)
    x[[17, 40, 99]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(dk.NonFiniteError, match=r"3 non-finite .* index 17"):
        dk.encode(x)
    with pytest.raises(ValueError):
        dk.encode(x, reference=np.zeros_like(x))
    assert dk.decode(dk.encode(x, quantizer="none")).tobytes() == x.tobytes()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="bits"):
        dk.encode(X, bits=0)
    with pytest.raises(ValueError, match="quantizer"):
        dk.encode(X, quantizer="nope")
    with pytest.raises(ValueError, match="coder"):
        dk.encode(X, coder="nope")
    with pytest.raises(ValueError, match="dtype"):
        dk.encode(np.arange(5))
    with pytest.raises(ValueError, match="numpy array or a torch tensor"):
        dk.encode([1.0, 2.0])
