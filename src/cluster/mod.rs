//! Cluster mode above the hub: instance membership with heartbeats and
//! reaping ([`membership`]), and the loop that drives it against a hub
//! ([`driver`]). The Redis connection and key layout are in
//! [`crate::redis`]; the Redis-backed store and broker live beside their
//! in-memory twins in `store::redis` and `broker::redis`.

pub mod driver;
pub mod membership;
