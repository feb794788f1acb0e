//! mcp-hub: a real-time hub through which several clients control one
//! WhatsApp account together.
//!
//! Layout: [`protocol`] (wire types), [`server`] (HTTP + the connection
//! loop), [`hub`] (shared state, routing, execution), [`store`] (session
//! state: memory / Redis), [`broker`] (broadcast bus: local / Redis pub/sub),
//! [`membership`] (live instances: local / Redis heartbeats and reaping),
//! [`redis`] (the low-level Redis layer under store, broker and AI),
//! [`cluster`] (the membership loop, above the hub), [`config`] (every
//! setting), [`ai`] (providers and their coordinator), [`whatsapp`]
//! (connectors), [`terminal`] (the terminal client).

pub mod ai;
pub mod app;
pub mod approvals;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod contacts;
pub mod durable;
pub mod hub;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod redis;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod terminal;
pub mod transfer;
pub mod transport;
pub mod whatsapp;
