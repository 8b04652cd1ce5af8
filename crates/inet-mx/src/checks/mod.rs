//! The inbound checks of the Internet mail server, as a tower pipeline. One place to read it:
//!
//! ```text
//!   SMTP session (MAIL FROM / RCPT TO / end of DATA), as an `Inbound` request
//!     -> recipient   RCPT: customer domains only (550 5.7.1 relaying denied), existing mailboxes
//!                    only (550 5.1.1), 451 4.3.0 when the directory cannot be read
//!     -> antivirus   DATA: EICAR, raw and in decoded MIME parts; an infected message is marked for
//!                    quarantine (the transfer files it in Quarantine, never in the INBOX)
//!     -> blocklist   MAIL FROM: the store's sender blocklist (address or domain), 550 5.7.1
//!     -> notify      DATA: once the message is accepted, new-mail notifications in the background
//!                    (SMS gateway or a notice to the alternate address); never holds the 250
//!     -> hand-off    DATA: fabric id, Received header, enqueue on `inbound` (mirrored), 250
//! ```
//!
//! Every layer sees every step and acts only on the ones it checks; the others pass through. A
//! layer refuses by answering a negative [`Reply`] without calling the next one. The answer to
//! MAIL FROM and RCPT TO is positive when every layer let it through (the session then sends its
//! own 250); the answer to DATA is what the session sends.

pub mod antivirus;
pub mod blocklist;
pub mod handoff;
pub mod notify;
pub mod recipient;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use smtp::{Address, Envelope, Reply};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

/// What the session asks the pipeline.
#[derive(Debug)]
pub enum Step {
    /// MAIL FROM (`None`: the null reverse path).
    Sender(Option<Address>),
    /// RCPT TO.
    Recipient(Address),
    /// The end of DATA.
    Data(Message),
}

/// A message at the end of DATA.
#[derive(Debug)]
pub struct Message {
    /// The fabric message id, given before the checks so every log line can carry it.
    pub id: String,
    /// As received (dot-unstuffed, CRLF line ends), without the Received header yet.
    pub body: Vec<u8>,
    /// Set by the antivirus layer: what was found.
    pub quarantine: Option<&'static str>,
}

#[derive(Debug)]
pub struct Inbound {
    pub env: Envelope,
    pub step: Step,
}

/// The answer of a step that every layer let through.
pub fn pass() -> Reply {
    Reply::new(250, "2.0.0", "ok")
}

pub type CheckFuture = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

/// The whole pipeline, as the handler holds it.
pub type Pipeline = BoxCloneSyncService<Inbound, Reply, Infallible>;

/// What a layer's service needs of the next one.
pub trait Next:
    tower::Service<Inbound, Response = Reply, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Next for S where
    S: tower::Service<Inbound, Response = Reply, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The inbound checks in the issue's order, ending in the hand-off to the store.
pub fn pipeline(
    recipient: recipient::RecipientLayer,
    blocklist: blocklist::BlocklistLayer,
    notify: notify::NotifyLayer,
    handoff: handoff::StoreHandoff,
) -> Pipeline {
    let service = ServiceBuilder::new()
        .layer(recipient)
        .layer(antivirus::AntivirusLayer)
        .layer(blocklist)
        .layer(notify)
        .service(handoff);
    BoxCloneSyncService::new(service)
}
