//! Cluster mode plumbing: the Redis connection and key layout ([`conn`])
//! and instance membership with heartbeats and reaping ([`membership`]).
//! The Redis-backed store and broker live beside their in-memory twins in
//! `store::redis` and `broker::redis`.

pub mod conn;
pub mod membership;
