//! Lattice quantization (work in progress).
