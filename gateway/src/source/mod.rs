//! Sources turn the outside world into [`Batch`](crate::model::Batch)es for the core, and nothing else:
//! they never evaluate rules and never hold point state.
//!
//! Owns: MQTT and Modbus connections, decoding, the reject counters' inputs.
//! May import: `model`, `config`, `metrics`.

pub mod dlt645;
pub mod hj212;
pub mod modbus;
pub mod mqtt;
pub mod poll;
