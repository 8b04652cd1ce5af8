//! New-mail notification (end of DATA): once the message is accepted (the store has it and the 250
//! is on its way), the recipients who asked for it are notified in the background by the
//! [`Notifier`](crate::notifier::Notifier): an SMS to the gateway, or a short notice mail to their
//! alternate address. The 250 never waits for it and a failure never touches the mail. Quarantined
//! messages (infected) bring no notification: they are not new mail in the INBOX.

use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::{CheckFuture, Inbound, Next, Step};
use crate::notifier::{Accepted, Notifier};

/// The most header bytes kept for the notification (From and Subject are read from them).
const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct NotifyLayer {
    notifier: Notifier,
}

impl NotifyLayer {
    pub fn new(notifier: Notifier) -> NotifyLayer {
        NotifyLayer { notifier }
    }
}

impl<S> Layer<S> for NotifyLayer {
    type Service = Notify<S>;
    fn layer(&self, inner: S) -> Notify<S> {
        Notify {
            notifier: self.notifier.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Notify<S> {
    notifier: Notifier,
    inner: S,
}

/// The header section of a message (up to the empty line), capped.
fn header_section(body: &[u8]) -> Vec<u8> {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 4);
    body[..end.min(MAX_HEADER_BYTES)].to_vec()
}

impl<S: Next> Service<Inbound> for Notify<S> {
    type Response = smtp::Reply;
    type Error = std::convert::Infallible;
    type Future = CheckFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Inbound) -> CheckFuture {
        let (notifier, inner) = (self.notifier.clone(), self.inner.clone());
        Box::pin(async move {
            let Step::Data(message) = &req.step else {
                return inner.oneshot(req).await;
            };
            let accepted = (message.quarantine.is_none()).then(|| Accepted {
                id: message.id.clone(),
                envelope_from: req.env.from.as_ref().map(|a| a.as_string()),
                rcpts: req
                    .env
                    .rcpts
                    .iter()
                    .map(|a| a.as_string().to_ascii_lowercase())
                    .collect(),
                headers: header_section(&message.body),
            });
            let reply = inner.oneshot(req).await?;
            if reply.is_positive()
                && let Some(accepted) = accepted
            {
                notifier.spawn(accepted);
            }
            Ok(reply)
        })
    }
}
