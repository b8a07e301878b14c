//! The etcd shell: connecting (TLS, auth, keepalive), the list-then-watch loop, and saying why
//! etcd failed (`cause`, with `probe`) or went back in time (`rewind`).

pub mod cause;
pub mod client;
pub mod probe;
pub mod rewind;
pub mod watcher;

pub use cause::Cause;
pub use client::{Listing, connect, explained, list_prefix, read_prefix};
pub use watcher::{KvEvent, Update, watch_prefix};
