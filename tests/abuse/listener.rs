//! See tests/abuse.rs.

#[allow(unused_imports)]
use crate::support::*;
