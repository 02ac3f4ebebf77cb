//! Quantizers: map floats to small integer symbols plus the tables needed to map them back.

pub mod exponent;
