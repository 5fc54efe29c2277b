//! The bottom layer: what every role serving HTTP uses, and nothing that knows a role.
//! Redirect URI and resource rules ([`uris`]).

pub mod client_ip;
pub mod origin;
pub mod pages;
pub mod request_id;
pub mod uris;
