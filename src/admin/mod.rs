//! The admin socket: a local HTTP/JSON interface to one agent, for debugging a node.

pub mod api;
pub mod attach;
pub mod client;
pub mod peer;
pub mod route;
pub mod server;
