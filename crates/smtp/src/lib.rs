//! SMTP for the fabric's mail servers: a server session (RFC 5321 with PIPELINING, SIZE, 8BITMIME and
//! ENHANCEDSTATUSCODES) that enforces the limits of RFC 5321 4.5.3 and frames DATA so that no
//! smuggling form can end it early.
//!
//! - `reader`: CRLF-only lines with hard limits and no unbounded buffering.
//! - `address`: paths, their limits, and the relay forms refused.
//! - `reply`: replies with enhanced status codes.
//! - `client`: a small client for one delivery, with an outcome per recipient (inet-mx's outbound
//!   worker, `fabric send`).
//! - `dsn`: delivery status notifications (RFC 3464): bounces and delay notices.
//! - `fabric_id`: the header a relay hands a message over with, naming its fabric message id.
//! - `session`: the state machine; roles implement [`Handler`]. In submission mode
//!   ([`Config::submission`]) it offers AUTH PLAIN/LOGIN (RFC 4954) inside TLS only and MAIL needs an
//!   authenticated session (`session/auth.rs`).
//!
//! Metrics: `fabric_smtp_sessions_total`, `fabric_smtp_replies_total{code}`,
//! `fabric_smtp_refusals_total{kind}`, `fabric_smtp_auth_total{result}`.

pub mod address;
pub mod client;
pub mod dsn;
pub mod fabric_id;
pub mod reader;
pub mod reply;
pub mod session;

pub use address::{Address, PathError, parse_path};
pub use reply::Reply;
pub use session::{AuthError, Config, Envelope, Handler, serve};
