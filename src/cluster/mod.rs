//! Cluster mode above the hub: the loop that drives this instance's
//! membership against a hub ([`driver`]): heartbeats, re-announcing the
//! local clients, reaping dead instances. Membership itself (the trait and
//! its memory and Redis twins) is in [`crate::membership`]; the Redis
//! connection and key layout are in [`crate::redis`]; the Redis-backed
//! store and broker live beside their in-memory twins in `store::redis` and
//! `broker::redis`.

pub mod driver;
