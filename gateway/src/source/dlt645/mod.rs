//! DL/T 645-2007 source: electricity meters on RS-485 buses, read over a serial port or through a
//! serial server in transparent mode over TCP.

pub mod codec;
