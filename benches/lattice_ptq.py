"""Post-training quantization of a small CNN: LatticeQ (SPEC §2.8) against uniform quantization.

A CNN with four 3x3 convolutions (16-32-64-64 filters, ReLU, max-pooling) and a linear head is
trained on the scikit-learn digits (32x32, 1000 train / 797 validation; AdamW, random shifts).
Its conv weights are then quantized without data or fine-tuning, per layer and per channel
(channel = output filter), at 2, 3 and 4 bits, with:

- ``uniform``: ``dk.quant.uniform`` symmetric min/max, 2^b − 1 levels centred on 0 (zero
  point 0), one float32 scale per layer or per channel;
- ``cubic``: the best-scaled cubic lattice λI (``find_basis(iters=0)``, λ minimizing the mean
  cubed error), codes in [−2^(b−1), 2^(b−1) − 1]: uniform quantization with 2^b levels and an
  MCE-optimal (clipping) step, one float32 λ per layer or channel;
- ``lattice``: LatticeQ, blocks of 3 = the rows of each 3x3 kernel, basis searched from λI by
  random perturbation (MCE, best of ``restarts`` searches), Babai's nearest plane; float32
  bases (36 bytes each);
- ``lattice8``: the same bases rounded to 8 bits with one float32 scale (13 bytes each, the
  thesis' 32 + n²·8 bits), codes recomputed with the rounded basis.

Biases and the linear head stay in float32 (not counted in the sizes). Reported, per
configuration: MSE and MCE (mean |e|^3) of all conv weights, validation accuracy of the
quantized model, bytes after entropy coding (one ``dk.codec`` stream of codes per layer + 1
offset byte, plus the side information), and for per-layer quantization the size of
``dk.encode`` blobs (one per conv tensor, per-tensor parameters, its own search). Because
entropy coding makes "b bits" a nominal figure, each quantizer is also compared with
entropy-coded uniform quantization of at most the same size (step = c·max|w|, bisection on c).

Usage: ``nice python benches/lattice_ptq.py [--quick] [--json PATH]`` (Markdown on stdout,
progress on stderr).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import deltackpt as dk

METHODS = ("uniform", "cubic", "lattice", "lattice8")
GRANULARITIES = ("layer", "channel")
BASIS_BYTES = 9 * 4  # a 3x3 float32 basis
BASIS8_BYTES = 4 + 9  # a 3x3 basis quantized to 8 bits + its float32 scale
SCALE_BYTES = 4  # a float32 scale (uniform) or lambda (cubic)


# ----------------------------------------------------------------------------- model and data


def build_cnn(widths: tuple[int, ...] = (16, 32, 64, 64), classes: int = 10) -> Any:
    """3x3 convolutions (padding 1) with ReLU, 2x2 max-pooling after each of the first three,
    then dropout and one linear layer on the flattened (width x 4 x 4) features (32x32 input)."""
    from torch import nn

    layers: list[Any] = []
    cin = 1
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU()]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        cin = w
    side = 32 // 2 ** min(len(widths), 3)
    layers += [nn.Flatten(), nn.Dropout(0.3), nn.Linear(cin * side * side, classes)]
    return nn.Sequential(*layers)


def train_cnn(
    seed: int,
    epochs: int,
    widths: tuple[int, ...] = (16, 32, 64, 64),
    n_train: int | None = None,
    lr: float = 3e-3,
) -> tuple[Any, float, Any, Any]:
    """Train on the digits with AdamW (batch 32, one-cycle learning rate, random shifts of up to
    2 pixels per batch); returns (model, float val accuracy %, x_val, y_val). Seeded by ``seed``."""
    import torch
    import torch.nn.functional as F

    from deltackpt._realdata import accuracy, load_digits_32

    torch.manual_seed(seed)
    np.random.seed(seed)
    xt, yt, xv, yv = load_digits_32()
    if n_train is not None:
        xt, yt = xt[:n_train], yt[:n_train]
    model = build_cnn(widths)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    per_epoch = (len(xt) + 31) // 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(epochs * per_epoch, 1))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 32):
            idx = order[i : i + 32]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(xt[idx], (dx, dy), (2, 3))
            opt.zero_grad()
            F.cross_entropy(model(x), yt[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    return model, accuracy(model, xv, yv), xv, yv


def conv_layers(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every 3x3 Conv2d of the model, in order."""
    from torch import nn

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)
    ]


def layer_info(model: Any) -> list[dict[str, Any]]:
    """Name, shape and the correlation between neighbouring entries of a kernel row
    (mean of corr(w0, w1) and corr(w1, w2) over the rows of the layer) of each 3x3 conv."""
    out = []
    for k, (name, m) in enumerate(conv_layers(model)):
        w = m.weight.detach().cpu().numpy().astype(np.float64)
        b = w.reshape(-1, 3)
        c = np.corrcoef(b.T)
        out.append(
            {
                "name": f"conv{k + 1}",
                "module": name,
                "shape": list(w.shape),
                "weights": int(w.size),
                "row_neighbour_corr": float((c[0, 1] + c[1, 2]) / 2),
            }
        )
    return out


# ----------------------------------------------------------------------------- quantizers


@dataclass
class QLayer:
    """One conv weight quantized: reconstruction, integer codes and side information."""

    w_hat: np.ndarray  # same shape as the weight, float64
    codes: np.ndarray  # int32; (O, I, 3, 3) for uniform, (blocks, 3) for lattice/cubic
    lo: int  # smallest code the quantizer may emit
    hi: int  # largest code the quantizer may emit
    side_bytes: int  # scales / bases in float32
    params: list[Any] = field(default_factory=list)  # scales or bases (for inspection)


def _search(blocks: np.ndarray, bits: int, iters: int, seed: int, restarts: int) -> np.ndarray:
    """Best basis (by MCE) over ``restarts`` searches with seeds ``seed .. seed+restarts-1``;
    ``iters == 0`` gives the best-scaled cubic lattice λI."""
    if iters == 0:
        return dk.quant.find_basis(blocks, bits, iters=0, seed=seed, loss="mce")
    best, best_err = None, np.inf
    for r in range(max(restarts, 1)):
        b = dk.quant.find_basis(blocks, bits, iters=iters, seed=seed + r, loss="mce")
        e = dk.quant.lattice_error(blocks, b, bits, loss="mce")
        if e < best_err:
            best, best_err = b, e
    return best


def quantize_basis(basis: np.ndarray) -> np.ndarray:
    """Round a basis to 8-bit symmetric levels (one scale = max|entry| / 127), as float32.
    λI stays exactly λI. Falls back to the float basis if rounding made it singular."""
    b = np.asarray(basis, dtype=np.float64)
    m = float(np.abs(b).max())
    if m == 0.0:
        return np.asarray(basis, dtype=np.float32)
    q = (np.rint(b / m * 127.0) * (m / 127.0)).astype(np.float32)
    if abs(np.linalg.det(q.astype(np.float64))) < 1e-6 * abs(np.linalg.det(b)):
        return np.asarray(basis, dtype=np.float32)
    return q


def quantize_conv(
    w: np.ndarray,
    method: str,
    bits: int,
    granularity: str,
    *,
    iters: int = 400,
    restarts: int = 1,
    seed: int = 0,
    bases: list[np.ndarray] | None = None,
) -> QLayer:
    """Quantize a conv weight ``w`` (O, I, 3, 3) with ``method`` in METHODS at ``bits`` bits,
    one scale/basis per layer (``granularity="layer"``) or per output filter (``"channel"``).
    ``bases`` (lattice methods): reuse these searched float bases instead of searching."""
    if method not in METHODS or granularity not in GRANULARITIES:
        raise ValueError(f"unknown method/granularity {method}/{granularity}")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"expected a (O, I, 3, 3) weight, got {w.shape}")
    per_channel = granularity == "channel"
    if method == "uniform":
        codes, scale, zp = dk.quant.uniform(w, bits, symmetric=True, per_channel=per_channel)
        w_hat = dk.quant.uniform_dequantize(codes, scale, zp)
        q = 2 ** (bits - 1) - 1
        n_scales = w.shape[0] if per_channel else 1
        return QLayer(w_hat, codes, -q, q, SCALE_BYTES * n_scales, list(np.atleast_1d(scale)))
    groups = [w[o].reshape(-1, 3) for o in range(w.shape[0])] if per_channel else [w.reshape(-1, 3)]
    its = 0 if method == "cubic" else iters
    if bases is not None and len(bases) != len(groups):
        raise ValueError(f"{len(bases)} bases for {len(groups)} groups")
    searched, codes, recon = [], [], []
    for g, blocks in enumerate(groups):
        if bases is not None:
            basis = np.asarray(bases[g], dtype=np.float32)
        else:
            basis = _search(blocks, bits, its, seed + 1000 * g, restarts)
        searched.append(basis)
        if method == "lattice8":
            basis = quantize_basis(basis)
        c = dk.quant.babai(blocks, basis, bits)
        codes.append(c)
        recon.append(dk.quant.lattice_dequantize(c, basis))
    per_group = {"cubic": SCALE_BYTES, "lattice": BASIS_BYTES, "lattice8": BASIS8_BYTES}
    side = per_group[method] * len(groups)
    w_hat = np.concatenate(recon).reshape(w.shape)
    half = 2 ** (bits - 1)
    return QLayer(w_hat, np.concatenate(codes), -half, half - 1, side, searched)


def coded_bytes(codes: np.ndarray) -> int:
    """Bytes of one entropy-coded stream of ``codes`` (as ``codes - min`` uint8) + 1 offset byte."""
    c = np.asarray(codes).reshape(-1).astype(np.int64)
    sym = (c - c.min()).astype(np.uint8)
    return len(dk.codec.encode(sym, coder="auto")) + 1


def uniform_at_size(
    ws: list[np.ndarray], granularity: str, target_bytes: int, iters: int = 40
) -> dict[str, Any]:
    """Entropy-coded uniform quantization matched in size: step = c·max|w| per layer or per
    channel, codes round(w / step) in [−127, 127] (symmetric, zero point 0), with the largest
    number of levels in use whose coded size (same accounting) is ≤ ``target_bytes``; ``c`` is
    found by bisection. Returns w_hats, total bytes and c."""

    def amax(w: np.ndarray) -> np.ndarray:
        if granularity == "channel":
            return np.abs(w).reshape(w.shape[0], -1).max(1).reshape(-1, 1, 1, 1)
        return np.array(np.abs(w).max())

    def at(c: float) -> tuple[list[np.ndarray], int]:
        w_hats, total = [], 0
        for w in ws:
            step = np.maximum(c * amax(w), 1e-30)
            codes = np.clip(np.rint(w / step), -127, 127)
            w_hats.append(codes * step)
            total += coded_bytes(codes) + SCALE_BYTES * (
                w.shape[0] if granularity == "channel" else 1
            )
        return w_hats, total

    lo, hi = np.log(1.0 / 127.0), np.log(4.0)  # small c: many levels (big); large c: all zero
    best = at(float(np.exp(hi)))
    best_c = float(np.exp(hi))
    if best[1] > target_bytes:
        return {"w_hats": best[0], "bytes": best[1], "c": best_c}
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        w_hats, total = at(float(np.exp(mid)))
        if total <= target_bytes:
            best, best_c, hi = (w_hats, total), float(np.exp(mid)), mid
        else:
            lo = mid
    return {"w_hats": best[0], "bytes": best[1], "c": best_c}


def weight_errors(ws: list[np.ndarray], w_hats: list[np.ndarray]) -> tuple[float, float]:
    """(MSE, MCE) over all elements of all tensors; MCE = mean |e|^3."""
    e = np.concatenate([(a - b).reshape(-1) for a, b in zip(ws, w_hats)])
    return float(np.mean(e**2)), float(np.mean(np.abs(e) ** 3))


def quantized_accuracy(model: Any, w_hats: list[np.ndarray], x: Any, y: Any) -> float:
    """Validation accuracy (%) of a copy of ``model`` whose 3x3 conv weights are ``w_hats``."""
    import torch

    from deltackpt._realdata import accuracy

    q = copy.deepcopy(model)
    for (_, m), wh in zip(conv_layers(q), w_hats):
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.asarray(wh, dtype=np.float32)))
    q.eval()
    return accuracy(q, x, y)


def dk_encode_bytes(ws: list[np.ndarray], method: str, bits: int, iters: int) -> int | None:
    """Total size of ``dk.encode`` blobs (one per tensor, per-tensor parameters)."""
    if method not in ("uniform", "lattice"):
        return None
    total = 0
    for w in ws:
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        if method == "uniform":
            total += len(dk.encode(w32, quantizer="uniform", bits=bits))
        else:
            total += len(dk.encode(w32, quantizer="lattice", bits=bits, dim=3, iters=iters))
    return total


# ----------------------------------------------------------------------------- experiment


def evaluate_model(
    model: Any,
    x_val: Any,
    y_val: Any,
    *,
    bits_list: tuple[int, ...] = (2, 3, 4),
    granularities: tuple[str, ...] = GRANULARITIES,
    methods: tuple[str, ...] = METHODS,
    iters: int = 400,
    restarts: int = 1,
    seed: int = 0,
    with_dk_encode: bool = True,
    log: Any = None,
) -> list[dict[str, Any]]:
    """One row per (granularity, bits, method) for one trained model."""
    ws = [m.weight.detach().cpu().numpy().astype(np.float64) for _, m in conv_layers(model)]
    n_weights = int(sum(w.size for w in ws))
    rows = []
    searched: dict[tuple[str, int], list[list[np.ndarray]]] = {}
    for gran in granularities:
        for bits in bits_list:
            for method in methods:
                t0 = time.perf_counter()
                reuse = searched.get((gran, bits)) if method == "lattice8" else None
                qs = [
                    quantize_conv(
                        w,
                        method,
                        bits,
                        gran,
                        iters=iters,
                        restarts=restarts,
                        seed=seed,
                        bases=None if reuse is None else reuse[i],
                    )
                    for i, w in enumerate(ws)
                ]
                if method == "lattice":
                    searched[(gran, bits)] = [q.params for q in qs]
                w_hats = [q.w_hat for q in qs]
                mse, mce = weight_errors(ws, w_hats)
                code_bytes = sum(coded_bytes(q.codes) for q in qs)
                side = sum(q.side_bytes for q in qs)
                dk_bytes = None
                if with_dk_encode and gran == "layer":
                    dk_bytes = dk_encode_bytes(ws, method, bits, iters)
                per_layer = [weight_errors([w], [q.w_hat]) for w, q in zip(ws, qs)]
                row = {
                    "layer_mse": [e[0] for e in per_layer],
                    "layer_mce": [e[1] for e in per_layer],
                    "granularity": gran,
                    "bits": bits,
                    "method": method,
                    "mse": mse,
                    "mce": mce,
                    "accuracy": quantized_accuracy(model, w_hats, x_val, y_val),
                    "code_bytes": code_bytes,
                    "side_bytes": side,
                    "total_bytes": code_bytes + side,
                    "bits_per_weight": 8.0 * (code_bytes + side) / n_weights,
                    "dk_encode_bytes": dk_bytes,
                    "n_weights": n_weights,
                    "codes_in_range": all(
                        int(q.codes.min()) >= q.lo and int(q.codes.max()) <= q.hi for q in qs
                    ),
                    "seconds": time.perf_counter() - t0,
                }
                if method != "uniform":
                    eq = uniform_at_size(ws, gran, row["total_bytes"])
                    e_mse, e_mce = weight_errors(ws, eq["w_hats"])
                    row["same_size_uniform"] = {
                        "bytes": eq["bytes"],
                        "step_over_max": eq["c"],
                        "mse": e_mse,
                        "mce": e_mce,
                        "accuracy": quantized_accuracy(model, eq["w_hats"], x_val, y_val),
                    }
                rows.append(row)
                if log is not None:
                    log(
                        f"  {gran:7s} {bits}b {method:8s} mse={mse:.3e} mce={mce:.3e} "
                        f"acc={row['accuracy']:.2f} bytes={row['total_bytes']} "
                        f"({row['seconds']:.1f}s)"
                    )
    return rows


def run(
    *,
    seeds: tuple[int, ...],
    epochs: int,
    widths: tuple[int, ...] = (16, 32, 64, 64),
    bits_list: tuple[int, ...] = (2, 3, 4),
    iters: int = 400,
    restarts: int = 1,
    n_train: int | None = None,
    with_dk_encode: bool = True,
    log: Any = None,
) -> dict[str, Any]:
    """Train one model per seed, quantize it every way; returns per-seed results."""
    runs = []
    for s in seeds:
        t0 = time.perf_counter()
        model, acc, xv, yv = train_cnn(s, epochs, widths, n_train)
        if log is not None:
            log(f"seed {s}: float accuracy {acc:.2f}% (trained in {time.perf_counter() - t0:.0f}s)")
        rows = evaluate_model(
            model,
            xv,
            yv,
            bits_list=bits_list,
            iters=iters,
            restarts=restarts,
            seed=s,
            with_dk_encode=with_dk_encode,
            log=log,
        )
        n = rows[0]["n_weights"] if rows else 0
        runs.append(
            {
                "seed": s,
                "float_accuracy": acc,
                "fp32_bytes": 4 * n,
                "layers": layer_info(model),
                "rows": rows,
            }
        )
    return {
        "config": {
            "seeds": list(seeds),
            "epochs": epochs,
            "widths": list(widths),
            "bits": list(bits_list),
            "iters": iters,
            "restarts": restarts,
            "n_train": n_train,
        },
        "runs": runs,
    }


def aggregate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean over seeds (and min/max of the accuracy) per (granularity, bits, method)."""
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for r in result["runs"]:
        for row in r["rows"]:
            by_key.setdefault((row["granularity"], row["bits"], row["method"]), []).append(row)
    out = []
    for (gran, bits, method), rows in by_key.items():
        acc = [x["accuracy"] for x in rows]
        dkb = [x["dk_encode_bytes"] for x in rows if x["dk_encode_bytes"] is not None]
        out.append(
            {
                "granularity": gran,
                "bits": bits,
                "method": method,
                "mse": float(np.mean([x["mse"] for x in rows])),
                "mce": float(np.mean([x["mce"] for x in rows])),
                "acc_mean": float(np.mean(acc)),
                "acc_min": float(min(acc)),
                "acc_max": float(max(acc)),
                "total_bytes": float(np.mean([x["total_bytes"] for x in rows])),
                "side_bytes": float(np.mean([x["side_bytes"] for x in rows])),
                "bits_per_weight": float(np.mean([x["bits_per_weight"] for x in rows])),
                "dk_encode_bytes": float(np.mean(dkb)) if dkb else None,
            }
        )
        eq = [x["same_size_uniform"] for x in rows if "same_size_uniform" in x]
        if eq:
            out[-1]["same_size_uniform"] = {
                k: float(np.mean([e[k] for e in eq])) for k in ("bytes", "mse", "mce", "accuracy")
            }
            out[-1]["same_size_uniform"]["acc_min"] = float(min(e["accuracy"] for e in eq))
            out[-1]["same_size_uniform"]["acc_max"] = float(max(e["accuracy"] for e in eq))
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table (means over seeds; accuracy range in brackets)."""
    runs = result["runs"]
    facc = [r["float_accuracy"] for r in runs]
    fp32 = runs[0]["fp32_bytes"]
    n = len(runs)

    def acc_cell(mean: float, lo: float, hi: float) -> str:
        return f"{mean:.2f}" if n == 1 else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"

    lines = [
        "| granularity | bits | quantizer | weight MSE | weight MCE | val. acc. % | "
        "bytes (codes + side) | side bytes | bits/weight | dk.encode bytes |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| — | 32 | float | 0 | 0 | {acc_cell(np.mean(facc), min(facc), max(facc))} | "
        f"{fp32} (fp32) | — | 32 | — |",
    ]
    for a in aggregate(result):
        dkb = "—" if a["dk_encode_bytes"] is None else f"{a['dk_encode_bytes']:.0f}"
        lines.append(
            f"| {a['granularity']} | {a['bits']} | {a['method']} | {a['mse']:.3e} | "
            f"{a['mce']:.3e} | {acc_cell(a['acc_mean'], a['acc_min'], a['acc_max'])} | "
            f"{a['total_bytes']:.0f} | {a['side_bytes']:.0f} | {a['bits_per_weight']:.3f} | "
            f"{dkb} |"
        )
    lines += [
        "",
        "At equal size: each quantizer against entropy-coded uniform quantization (same "
        "granularity, step = c·max|w|, up to 255 levels) whose size is the largest not above it.",
        "",
        "| granularity | bits | quantizer | bytes | weight MSE | weight MCE | val. acc. % | "
        "uniform, same size: bytes | weight MSE | weight MCE | val. acc. % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(result):
        if "same_size_uniform" not in a:
            continue
        e = a["same_size_uniform"]
        lines.append(
            f"| {a['granularity']} | {a['bits']} | {a['method']} | {a['total_bytes']:.0f} | "
            f"{a['mse']:.3e} | {a['mce']:.3e} | "
            f"{acc_cell(a['acc_mean'], a['acc_min'], a['acc_max'])} | "
            f"{e['bytes']:.0f} | {e['mse']:.3e} | {e['mce']:.3e} | "
            f"{acc_cell(e['accuracy'], e['acc_min'], e['acc_max'])} |"
        )
    lines += [
        "",
        "Per layer: MCE of LatticeQ (float bases) / MCE of the best cubic lattice λI, same bits "
        "and granularity (< 1: the searched basis helps); row corr. = mean correlation of "
        "neighbouring entries of a kernel row.",
        "",
    ]
    bits_list = sorted({row["bits"] for row in runs[0]["rows"]})
    head = ["layer", "shape", "row corr."]
    head += [f"{g} {b}b" for g in GRANULARITIES for b in bits_list]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, info in enumerate(runs[0]["layers"]):
        corr = np.mean([r["layers"][i]["row_neighbour_corr"] for r in runs])
        cells = [info["name"], "×".join(map(str, info["shape"])), f"{corr:.2f}"]
        for g in GRANULARITIES:
            for b in bits_list:
                ratios = []
                for r in runs:
                    got = {
                        x["method"]: x["layer_mce"][i]
                        for x in r["rows"]
                        if x["granularity"] == g and x["bits"] == b
                    }
                    if got.get("cubic", 0) > 0 and "lattice" in got:
                        ratios.append(got["lattice"] / got["cubic"])
                cells.append(f"{np.mean(ratios):.2f}" if ratios else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 8 epochs, 150 iters, 1 search (< 3 min)"
    )
    p.add_argument("--json", metavar="PATH", help="write the full results as JSON")
    p.add_argument("--seeds", type=int, default=None, help="number of training seeds")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="find_basis perturbations")
    p.add_argument("--restarts", type=int, default=None, help="basis searches kept best of")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("PTQ_TORCH_THREADS", "1")))
    seeds = a.seeds or (1 if a.quick else 5)
    epochs = a.epochs or (8 if a.quick else 18)
    iters = a.iters if a.iters is not None else (150 if a.quick else 1000)
    restarts = a.restarts or (1 if a.quick else 4)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    result = run(seeds=tuple(range(seeds)), epochs=epochs, iters=iters, restarts=restarts, log=log)
    result["seconds"] = time.perf_counter() - t0
    result["cpu"] = cpu_model()
    result["date_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["summary"] = aggregate(result)
    print(markdown(result))
    print(f"\n{result['seconds']:.0f} s, {result['cpu']}, {result['date_utc']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
