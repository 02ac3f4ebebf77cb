"""Type stubs of the Rust extension module (conversions only; see deltackpt._api)."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def encode(
    data: npt.NDArray[np.uint8],
    dtype: str,
    shape: list[int],
    reference: npt.NDArray[np.uint8] | None = None,
    quantizer: str = "exponent",
    bits: int = 3,
    coder: str = "auto",
    bucket_value: str = "mean",
    tag: int = 0,
    symmetric: bool = True,
    dim: int = 3,
    lattice_iters: int = 400,
    seed: int = 0,
    floor_exponent: int | None = None,
    floor_sign: int | None = None,
    reconstruction: npt.NDArray[np.uint8] | None = None,
    in_place: bool = False,
) -> bytes: ...
def delta_histogram(
    data: npt.NDArray[np.uint8],
    dtype: str,
    shape: list[int],
    reference: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint64]: ...
def decode(
    blob: bytes, reference: npt.NDArray[np.uint8] | None = None
) -> tuple[str, list[int], int, npt.NDArray[np.uint8]]: ...
def inspect(blob: bytes) -> dict[str, Any]: ...
def checksum128(data: bytes) -> bytes: ...
def fingerprint(data: np.ndarray) -> bytes: ...
def decode_into(
    blob: bytes,
    out: npt.NDArray[np.uint8],
    reference: npt.NDArray[np.uint8] | None = None,
    in_place: bool = False,
) -> tuple[str, list[int], int]: ...
def decode_chain_update(
    blobs: list[bytes],
    clamp0: list[bool],
    out: npt.NDArray[np.uint8],
    dtype: str,
    shape: list[int],
) -> None: ...
def codec_encode(symbols: npt.NDArray[np.uint8], coder: str = "tans") -> bytes: ...
def codec_decode(blob: bytes) -> npt.NDArray[np.uint8]: ...
def quant_exponent_f32(
    delta: npt.NDArray[np.float32], bits: int = 3, bucket_value: str = "mean"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]: ...
def quant_exponent_f64(
    delta: npt.NDArray[np.float64], bits: int = 3, bucket_value: str = "mean"
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]: ...
def quant_uniform(
    x: npt.NDArray[np.float64], bits: int, symmetric: bool, channels: int = 0
) -> tuple[npt.NDArray[np.int32], tuple[list[float], list[int], list[int], list[int]]]: ...
def quant_uniform_dequantize(
    codes: npt.NDArray[np.int32], params: tuple[list[float], list[int], list[int], list[int]]
) -> npt.NDArray[np.float64]: ...
def quant_babai(
    blocks: npt.NDArray[np.float64], n: int, basis: npt.NDArray[np.float32], bits: int
) -> npt.NDArray[np.int32]: ...
def quant_lattice_dequantize(
    codes: npt.NDArray[np.int32], n: int, basis: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]: ...
def quant_find_basis(
    blocks: npt.NDArray[np.float64],
    n: int,
    bits: int,
    iters: int = 400,
    seed: int = 0,
    loss: str = "mce",
    channels: int = 0,
) -> npt.NDArray[np.float32]: ...
def quant_lattice_error(
    blocks: npt.NDArray[np.float64],
    n: int,
    basis: npt.NDArray[np.float32],
    bits: int,
    loss: str = "mce",
) -> float: ...
def num_threads() -> int: ...
