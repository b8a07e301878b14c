//! The etcd shell: connecting (TLS, auth, keepalive) and the list-then-watch loop.

pub mod client;
pub mod watcher;

pub use client::{connect, read_prefix};
pub use watcher::{KvEvent, Update, watch_prefix};
