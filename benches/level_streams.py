#!/usr/bin/env python3
"""Dump the symbol streams the error-bounded and the 4-bit uniform quantizers hand to the
entropy coder, for the real deltas of ``benches/real_deltas.py``.

Usage: level_streams.py [DELTAS_DIR] [OUT_DIR]
(defaults /work/data/deltas and /work/data/levels)

For every ``<model>.npz`` (pairs ``<name>.before`` / ``<name>.after``) three directories are
written, one ``.u8`` file per tensor (the concatenated token streams of its chunks):

* ``OUT_DIR/<model>_rel3e-2``: tokens of ``rel_error=0.03`` (the chain's default save);
* ``OUT_DIR/<model>_tol``: tokens of ``tolerance=`` a tenth of the tensor's delta RMS;
* ``OUT_DIR/<model>_uniform4``: symbols of the 4-bit symmetric uniform quantizer.

The streams are recovered from blobs encoded with ``coder="raw"``: a raw entropy stream is a
zero byte, the u64 symbol count, then the symbols, and every chunk holds ``min(chunk, rest)``
elements, so each stream is found by its header.
"""

import os
import struct
import sys

import numpy as np

import deltackpt

CHUNK = 1 << 18


def raw_streams(blob: bytes, numel: int) -> bytes:
    """The symbols of the raw entropy streams in ``blob`` (chunks of ``CHUNK`` elements)."""
    out = []
    at = 0
    left = numel
    while left > 0:
        n = min(CHUNK, left)
        head = b"\x00" + struct.pack("<Q", n)
        i = blob.find(head, at)
        if i < 0:
            raise ValueError(f"no raw stream of {n} symbols after offset {at}")
        out.append(blob[i + 9 : i + 9 + n])
        at = i + 9 + n
        left -= n
    return b"".join(out)


def dump_model(path: str, out_dir: str) -> None:
    model = os.path.splitext(os.path.basename(path))[0]
    d = np.load(path)
    names = sorted({k.rsplit(".", 1)[0] for k in d.files})
    kinds = {
        "rel3e-2": lambda a, b, rms: deltackpt.encode(a, reference=b, rel_error=0.03, coder="raw"),
        "tol": lambda a, b, rms: deltackpt.encode(
            a, reference=b, tolerance=max(rms / 10, 1e-12), coder="raw"
        ),
        "uniform4": lambda a, b, rms: deltackpt.encode(
            a, reference=b, quantizer="uniform", bits=4, coder="raw"
        ),
    }
    for kind, enc in kinds.items():
        target = os.path.join(out_dir, f"{model}_{kind}")
        os.makedirs(target, exist_ok=True)
        total = 0
        for name in names:
            before = np.ascontiguousarray(d[name + ".before"])
            after = np.ascontiguousarray(d[name + ".after"])
            if before.dtype.kind != "f" or before.size == 0:
                continue
            delta = after.astype(np.float64) - before.astype(np.float64)
            rms = float(np.sqrt(np.mean(delta * delta)))
            blob = enc(after, before, rms)
            sym = raw_streams(blob, after.size)
            with open(os.path.join(target, name + ".u8"), "wb") as f:
                f.write(sym)
            total += len(sym)
        print(f"{target}: {len(names)} tensors, {total} symbols")


def main() -> None:
    src = sys.argv[1] if len(sys.argv) > 1 else "/work/data/deltas"
    out = sys.argv[2] if len(sys.argv) > 2 else "/work/data/levels"
    for f in sorted(os.listdir(src)):
        if f.endswith(".npz"):
            dump_model(os.path.join(src, f), out)


if __name__ == "__main__":
    main()
