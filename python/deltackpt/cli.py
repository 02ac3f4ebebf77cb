"""The `deltackpt` command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from . import _api


def _timed(f: Any, reps: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _row(name: str, raw: int, size: int, secs: float, dsecs: float) -> str:
    return (
        f"| {name} | {raw / 1e6:.1f} MB | {size / 1e6:.2f} MB | {raw / size:.2f}x "
        f"| {raw / secs / 1e6:.0f} | {raw / dsecs / 1e6:.0f} |"
    )


def demo(quiet: bool = False) -> int:
    """Encode real pretrained weights and a real training delta; print sizes and speeds."""
    import torch
    import zstandard

    from . import _realdata

    say = (lambda *a: None) if quiet else print
    header = (
        "| what | raw | stored | ratio | encode MB/s | decode MB/s |\n|---|---|---|---|---|---|"
    )

    say("deltackpt demo: real weights (all-MiniLM-L6-v2) and a real training delta\n")
    weights = _realdata.minilm_weights()
    flat = np.concatenate([w.reshape(-1) for w in weights.values() if w.dtype == np.float32])
    bf16 = torch.from_numpy(flat).to(torch.bfloat16)
    lines = [header]
    zc, zd = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    for name, x in [("MiniLM fp32, lossless", flat), ("MiniLM bf16, lossless", bf16)]:
        raw = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes
        secs, blob = _timed(lambda x=x: _api.encode(x, quantizer="none"))
        dsecs, out = _timed(lambda blob=blob: _api.decode(blob))
        exact = (
            torch.equal(out.view(torch.int16), x.view(torch.int16))
            if isinstance(x, torch.Tensor)
            else out.tobytes() == x.tobytes()
        )
        if not exact:
            print("error: lossless round trip differs", file=sys.stderr)
            return 1
        lines.append(_row(name, raw, len(blob), secs, dsecs))
        rb = x.view(torch.int16).numpy().tobytes() if isinstance(x, torch.Tensor) else x.tobytes()
        zsecs, z = _timed(lambda rb=rb: zc.compress(rb))
        zdsecs, _ = _timed(lambda z=z: zd.decompress(z))
        lines.append(_row(name.replace("lossless", "zstd -3"), raw, len(z), zsecs, zdsecs))

    # A real training delta: LeNet-5 on the scikit-learn digits, one SGD step after 5 epochs.
    torch.manual_seed(0)
    xt, yt, xv, yv = _realdata.load_realdata_32()
    model = _realdata.lenet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _realdata.train_steps(model, opt, xt, yt, epochs=5)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    _realdata.train_steps(model, opt, xt[:32], yt[:32], epochs=1, seed=1)
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    raw = after.numel() * 4
    secs, blob = _timed(lambda: _api.encode(after, reference=before, bits=3))
    dsecs, restored = _timed(lambda: _api.decode(blob, reference=before))
    delta = (after - before).abs()
    if not bool(torch.all((restored - after).abs() <= delta + 1e-6)):
        print("error: lossy error exceeds the delta", file=sys.stderr)
        return 1
    lines.append(_row("LeNet-5 step delta, 3-bit exponent", raw, len(blob), secs, dsecs))
    db = (after - before).numpy().tobytes()
    zsecs, z = _timed(lambda: zc.compress(db))
    zdsecs, _ = _timed(lambda: zd.decompress(z))
    lines.append(_row("LeNet-5 step delta, zstd -3 (lossless)", raw, len(z), zsecs, zdsecs))
    say("\n".join(lines))
    rel = float((restored - after).norm() / (after - before).norm())
    say(f"\nrelative error of the restored step (|r - u| / |delta|): {rel:.3f}")
    say(f"validation accuracy of the trained LeNet-5: {_realdata.accuracy(model, xv, yv):.1f}%")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `deltackpt` console script."""
    p = argparse.ArgumentParser(prog="deltackpt", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="compress real weights and a real training delta")
    d.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "demo":
        return demo(quiet=args.quiet)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
