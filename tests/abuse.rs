//! The abuse suite (issue 19): one test per hostile-input finding, each
//! against a hub exposed directly (no HAProxy in front), each failing on a
//! hub without the limit it proves. docs/security.md §12 maps every test
//! to its attack, limit, setting and metric.
//!
//! - [`listener`]: slowloris, fd exhaustion, idle sockets, the
//!   per-address cap.
//! - [`guards`]: the registration deadline, the per-identity cap, binary
//!   frames under the rate limit, the Host allow-list, the pages' headers.
//! - [`bounds`]: every response and stored record bounded in bytes
//!   (events pages, replay, idempotency records, agent calls).
//! - [`cpu`]: every name and text bounded; fuzzy matching bounded.
//! - [`identity`]: sessions, webhooks, tokens, REST keys, logs, secrets.
//! - [`low`]: JWKS fetching, `nbf`, the REST limit's key without auth,
//!   webhook logging and freshness, secrets in `Debug`.

mod bounds;
mod cpu;
mod guards;
mod identity;
mod listener;
mod low;
