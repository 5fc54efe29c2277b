//! The bottom layer: what every role serving HTTP uses, and nothing that knows a role:
//! the client's address ([`client_ip`]), the request id ([`request_id`]), origin and
//! authority checks ([`origin`]), the HTML kit ([`pages`]), and the rules for redirect URIs
//! and resource identifiers ([`uris`]).

/// Largest form or JSON body the OAuth endpoints and the operator's page accept; the proxy
/// refuses larger ones before they reach them.
pub const MAX_FORM_BODY: usize = 64 * 1024;

pub mod client_ip;
pub mod origin;
pub mod pages;
pub mod request_id;
pub mod routes;
pub mod sessions;
pub mod uris;
pub mod wellknown;
