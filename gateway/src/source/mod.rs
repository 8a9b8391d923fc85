//! Sources turn the outside world into [`Batch`](crate::model::Batch)es for the core, and nothing else:
//! they never evaluate rules and never hold point state.

pub mod modbus;
pub mod mqtt;
pub mod pool;
