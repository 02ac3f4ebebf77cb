"""Forged blobs with valid checksums: bounded memory, typed errors, never an abort.

Each probe runs in a child with an address-space limit and a timeout (conftest.run_limited):
an unbounded allocation would otherwise take the machine down rather than fail the test.
"""

from __future__ import annotations

import struct

import xxhash
from conftest import run_limited


def _rle_stream(n: int, c: int = 1 << 20) -> bytes:
    """A chunk-container symbol stream of `n` zeros: every chunk one RLE body (2 bytes)."""
    k = -(-n // c)
    sizes = struct.pack("<I", 2) * k
    return bytes([3]) + struct.pack("<Q", n) + struct.pack("<I", c) + sizes + b"\x01\x00" * k


def forged_exponent_blob(numel: int, chunk_elems: int) -> bytes:
    """A valid-checksum float64 exponent blob of `numel` zeros in chunks of `chunk_elems`."""
    n_chunks = -(-numel // chunk_elems)
    chunks = []
    for i in range(n_chunks):
        chunks.append(_rle_stream(min(chunk_elems, numel - i * chunk_elems)))
    params = bytes([1]) + struct.pack("<d", 0.0)
    body = b"DKPT" + bytes([1, 2, 1, 0, 2, 0, 1, 0]) + struct.pack("<Q", numel)
    body += struct.pack("<I", len(params)) + params
    body += struct.pack("<QI", chunk_elems, n_chunks)
    body += b"".join(struct.pack("<Q", len(c)) for c in chunks) + b"".join(chunks)
    return body + xxhash.xxh3_64_intdigest(body).to_bytes(8, "little")


PROBE = """
import deltackpt as dk
blob = bytes.fromhex({hex!r})
try:
    y = dk.decode(blob)
    print("decoded", y.nbytes)
except dk.CorruptDataError as e:
    print("corrupt", e)
"""


def test_one_huge_chunk_is_refused_before_allocating():
    # 4 GiB of float64 in one 2^29-element chunk of RLE bodies (~3 KB): the chunk size is
    # capped by the format, so the header is refused at once.
    blob = forged_exponent_blob(1 << 29, 1 << 29)
    assert len(blob) < 4096
    out = run_limited(PROBE.format(hex=blob.hex()), mem_mb=1024)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("corrupt") and "chunk size" in out.stdout


def test_huge_tensor_in_legal_chunks_fails_typed_under_a_memory_limit():
    # The same 4 GiB tensor in legal chunks: the output cannot be allocated under the limit,
    # which must be a CorruptDataError, not "memory allocation failed" and SIGABRT.
    blob = forged_exponent_blob(1 << 29, 1 << 20)
    out = run_limited(PROBE.format(hex=blob.hex()), mem_mb=1024)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("corrupt") and "memory" in out.stdout


def test_forged_blob_within_memory_decodes_to_zeros():
    # The forger's blob is well-formed: small enough, it decodes to what it declares.
    blob = forged_exponent_blob(3 << 20, 1 << 20)
    code = PROBE.format(hex=blob.hex()) + "\nprint(int(abs(y).max()))\n"
    out = run_limited(code, mem_mb=2048)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["decoded", str(8 * (3 << 20)), "0"]


def test_a_core_panic_is_a_deltackpt_error():
    # No worker thread can start (each would need a 1 TiB stack): the core panics, and
    # Python must see a DeltackptError subclass, not pyo3's PanicException.
    code = """
import numpy as np
import deltackpt as dk
try:
    dk.encode(np.ones(1 << 16, np.float32))
    print("ok")
except dk.DeltackptError as e:
    print(type(e).__name__, e)
except BaseException as e:
    print("untyped", type(e).__name__, e)
"""
    out = run_limited(code, mem_mb=4096, env={"RUST_MIN_STACK": str(1 << 40)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("InternalError"), out.stdout
    assert "worker thread" in out.stdout


def test_max_output_bytes_refuses_a_legal_but_huge_blob_before_allocating():
    blob = forged_exponent_blob(1 << 29, 1 << 20)  # 4 GiB in legal chunks, ~1.6 MB
    small = forged_exponent_blob(1000, 1000).hex()
    code = f"""
import deltackpt as dk
blob = bytes.fromhex({blob.hex()!r})
try:
    dk.decode(blob, max_output_bytes=1 << 30)
    print("decoded")
except dk.CorruptDataError as e:
    print("corrupt", e)
print(dk.decode(bytes.fromhex({small!r}), max_output_bytes=8000).shape)
"""
    out = run_limited(code, mem_mb=1024)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("corrupt") and "max_output_bytes" in lines[0]
    assert lines[1] == "(1000,)"
