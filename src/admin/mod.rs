//! The operator's page (`/admin` on the routes listener).
