//! The client side: `mcp-oauth-gateway client URL ...`.
