//! parkwatch: an edge gateway for smart industrial and science parks.
//!
//! Sources (MQTT, later Modbus) turn field data into batches of samples and events; the core task owns
//! point state; the API shows it. See `ARCHITECTURE.md` for the map and the rules between modules.

pub mod actions;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod core;
pub mod forward;
pub mod history;
pub mod incident;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod people;
pub mod reload;
pub mod report;
pub mod rulestest;
pub mod sim;
pub mod source;
