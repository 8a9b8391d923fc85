//! HJ 212-2017 source: the TCP server that emission-monitoring data loggers (数采仪) report to.
//!
//! `codec.rs` is the pure protocol: framing, both CRC variants, lenient field parsing, answers.
//!
//! Owns: the HJ 212 listeners, their connections and counters. May import: `model`, `config`,
//! `metrics`.

pub mod codec;
