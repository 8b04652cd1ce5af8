//! The SMTP side of the outside world: every remote MX at once. It accepts any mail (no relay rules:
//! it *is* the remote side), stores each message durably before its 250, and can be told to answer
//! like a troubled remote MX (`tempfail`: 451 4.3.0, `reject`: 550 5.7.1, at RCPT and at DATA).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{Map, Value};
use smtp::{Address, Envelope, Handler, Reply};

use crate::spool::Spool;

/// How the SMTP sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Tempfail,
    Reject,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Accept => "accept",
            Mode::Tempfail => "tempfail",
            Mode::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Accept, Mode::Tempfail, Mode::Reject]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    /// The refusal this mode gives, if any.
    fn refusal(self) -> Option<Reply> {
        match self {
            Mode::Accept => None,
            Mode::Tempfail => Some(Reply::new(
                451,
                "4.3.0",
                "remote MX temporarily unavailable; try again later",
            )),
            Mode::Reject => Some(Reply::new(550, "5.7.1", "message refused by policy")),
        }
    }
}

/// The current mode, shared by the SMTP sessions and the HTTP API.
#[derive(Debug, Default, Clone)]
pub struct ModeSwitch(Arc<AtomicU8>);

impl ModeSwitch {
    pub fn get(&self) -> Mode {
        match self.0.load(Ordering::SeqCst) {
            1 => Mode::Tempfail,
            2 => Mode::Reject,
            _ => Mode::Accept,
        }
    }

    pub fn set(&self, mode: Mode) {
        let v = match mode {
            Mode::Accept => 0,
            Mode::Tempfail => 1,
            Mode::Reject => 2,
        };
        self.0.store(v, Ordering::SeqCst);
        for m in [Mode::Accept, Mode::Tempfail, Mode::Reject] {
            metrics::gauge!("fabric_sink_smtp_mode", "mode" => m.as_str()).set(if m == mode {
                1.0
            } else {
                0.0
            });
        }
    }
}

pub struct SinkHandler {
    pub spool: Arc<Spool>,
    pub mode: ModeSwitch,
}

fn refuse(mode: Mode, stage: &'static str) -> Result<(), Reply> {
    match mode.refusal() {
        None => Ok(()),
        Some(reply) => {
            metrics::counter!("fabric_sink_smtp_refused_total", "mode" => mode.as_str(), "stage" => stage)
                .increment(1);
            tracing::info!(
                mode = mode.as_str(),
                stage,
                code = reply.code,
                "refusing as a troubled remote MX"
            );
            Err(reply)
        }
    }
}

impl Handler for SinkHandler {
    async fn check_sender(&self, _env: &Envelope, _from: Option<&Address>) -> Result<(), Reply> {
        Ok(())
    }

    async fn check_recipient(&self, _env: &Envelope, _rcpt: &Address) -> Result<(), Reply> {
        refuse(self.mode.get(), "rcpt")
    }

    async fn deliver(&self, env: &Envelope, message: Vec<u8>) -> Reply {
        if let Err(reply) = refuse(self.mode.get(), "data") {
            return reply;
        }
        let mut meta = Map::new();
        meta.insert(
            "mail_from".into(),
            Value::from(env.from.as_ref().map(|a| a.as_string()).unwrap_or_default()),
        );
        meta.insert(
            "rcpt_to".into(),
            Value::from(env.rcpts.iter().map(|a| a.as_string()).collect::<Vec<_>>()),
        );
        meta.insert("helo".into(), Value::from(env.helo.clone()));
        meta.insert("peer".into(), Value::from(env.peer.to_string()));
        meta.insert("tls".into(), Value::from(env.tls));
        let spool = self.spool.clone();
        let stored = tokio::task::spawn_blocking(move || spool.put(&message, meta)).await;
        match stored {
            Ok(Ok(sidecar)) => {
                let id = sidecar["id"].as_str().unwrap_or_default().to_string();
                metrics::counter!("fabric_sink_smtp_stored_total").increment(1);
                tracing::info!(sink_id = %id, from = %sidecar["mail_from"], rcpts = %sidecar["rcpt_to"],
                    size = %sidecar["size"], tls = env.tls, "mail received from the fabric");
                Reply::new(250, "2.0.0", format!("stored as {id}"))
            }
            Ok(Err(e)) => {
                metrics::counter!("fabric_sink_store_errors_total", "kind" => "smtp").increment(1);
                tracing::error!(error = %e, "message not stored");
                Reply::new(
                    451,
                    "4.3.0",
                    "cannot store the message now; try again later",
                )
            }
            Err(e) => {
                metrics::counter!("fabric_sink_store_errors_total", "kind" => "smtp").increment(1);
                tracing::error!(error = %e, "storing task failed");
                Reply::new(
                    451,
                    "4.3.0",
                    "cannot store the message now; try again later",
                )
            }
        }
    }
}
