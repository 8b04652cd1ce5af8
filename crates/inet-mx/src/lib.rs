//! The Internet mail server's parts, as a library: the binary `fabric-inet-mx` (`main.rs`) wires
//! them up, and the relay servers (`crates/relay`) reuse the inbound checks and the hand-off to the
//! store for the mail they hold, and the notifier for continuity notices.

pub mod checks;
pub mod handler;
pub mod notifier;
pub mod outbound;
