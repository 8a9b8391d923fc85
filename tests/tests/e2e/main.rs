//! End-to-end tests against real peers on loopback, compiled into one binary.

mod actions;
mod audit;
mod auth;
mod config_check;
mod dashboard;
mod demo;
mod dlt645;
mod durability;
mod forward;
mod grafana;
mod health;
mod history;
mod modbus;
mod mqtt;
mod notify;
mod reload;
mod report;
mod rooms;
mod rules;
mod systemd;
mod tls;
