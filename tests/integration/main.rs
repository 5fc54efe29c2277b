//! Integration tests: the whole gateway on port 0 everywhere, driven through its public
//! proxy like a real client. One binary (modules below) so it compiles once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod cimd;
mod client_cli;
mod clients;
mod common;
mod corpus;
mod errors;
mod flow;
mod layers;
mod modes;
mod ops;
mod proxy;
mod restart;
mod revocations;
mod rmcp_client;
mod roles;
mod soak;
mod tls;
mod transport;
mod trusted_proxies;
mod upstream;
mod users;
