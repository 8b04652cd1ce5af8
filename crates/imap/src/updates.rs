//! SELECT/EXAMINE, APPEND, IDLE, and the untagged updates of RFC 3501 7.4.1 / 5.2 (EXISTS, EXPUNGE,
//! FETCH FLAGS) sent when the folder changed underneath the session.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::framing::{Line, Reader};
use crate::session::{Flow, Selected, Session, no};
use crate::{Account, Backend, MAX_COMMAND_LINE, fetch, refuse};

impl<B: Backend> Session<'_, B> {
    pub(crate) async fn select(
        &mut self,
        tag: &str,
        name: &str,
        read_only: bool,
        out: &mut Vec<u8>,
    ) {
        self.selected = None;
        self.cache.clear();
        self.cache_bytes = 0;
        let listing = match self.account() {
            Ok(a) => a.list(name).await,
            Err(e) => Err(e),
        };
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                out.extend_from_slice(format!("{tag} {}\r\n", no(&e)).as_bytes());
                return;
            }
        };
        let n = listing.messages.len();
        let first_unseen = listing
            .messages
            .iter()
            .position(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")));
        out.extend_from_slice(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n");
        if read_only {
            out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
        } else {
            out.extend_from_slice(
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n",
            );
        }
        out.extend_from_slice(format!("* {n} EXISTS\r\n* 0 RECENT\r\n").as_bytes());
        if let Some(i) = first_unseen {
            out.extend_from_slice(format!("* OK [UNSEEN {}] First unseen\r\n", i + 1).as_bytes());
        }
        out.extend_from_slice(
            format!(
                "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n",
                listing.uidvalidity, listing.uidnext
            )
            .as_bytes(),
        );
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        out.extend_from_slice(format!("{tag} OK [{mode}] {verb} completed\r\n").as_bytes());
        self.selected = Some(Selected {
            name: name.to_string(),
            read_only,
            uidvalidity: listing.uidvalidity,
            uidnext: listing.uidnext,
            msgs: listing.messages,
        });
    }

    /// Looks at the folder again and reports what changed: EXISTS for new mail, FETCH FLAGS for
    /// changed flags, and (when `allow_expunge`) EXPUNGE for messages gone. While EXPUNGE is not
    /// allowed (RFC 3501 7.4.1) messages gone stay in the view.
    pub(crate) async fn refresh(&mut self, out: &mut Vec<u8>, allow_expunge: bool) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let listing = match self.account() {
            Ok(a) => a.list(&sel.name).await,
            Err(e) => Err(e),
        };
        let Ok(listing) = listing else {
            return;
        };
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        if listing.uidvalidity != sel.uidvalidity && sel.msgs.is_empty() {
            // A folder that had no messages (nor a UIDVALIDITY of its own) got its first one.
            sel.uidvalidity = listing.uidvalidity;
        } else if listing.uidvalidity != sel.uidvalidity {
            // The folder was created again underneath us: the client must start over.
            out.extend_from_slice(
                format!(
                    "* OK [UIDVALIDITY {}] UIDs changed\r\n",
                    listing.uidvalidity
                )
                .as_bytes(),
            );
            sel.uidvalidity = listing.uidvalidity;
        }
        let fresh = listing.messages;
        if allow_expunge {
            let mut i = sel.msgs.len();
            while i > 0 {
                i -= 1;
                let uid = sel.msgs[i].uid;
                if fresh.binary_search_by_key(&uid, |m| m.uid).is_err() {
                    sel.msgs.remove(i);
                    self.cache.remove(&uid);
                    out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                }
            }
        }
        for (i, m) in sel.msgs.iter_mut().enumerate() {
            if let Ok(j) = fresh.binary_search_by_key(&m.uid, |f| f.uid)
                && fresh[j].flags != m.flags
            {
                m.flags = fresh[j].flags.clone();
                out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
                fetch::flags(out, &m.flags);
                out.extend_from_slice(b")\r\n");
            }
        }
        let last = sel.msgs.last().map(|m| m.uid).unwrap_or(0);
        let before = sel.msgs.len();
        sel.msgs.extend(fresh.into_iter().filter(|m| m.uid > last));
        sel.uidnext = listing.uidnext.max(sel.uidnext);
        if sel.msgs.len() != before {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.msgs.len()).as_bytes());
        }
    }

    pub(crate) async fn append(
        &mut self,
        tag: &str,
        name: &str,
        flags: Vec<String>,
        date: Option<i64>,
        body: Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        let exists = match self.account() {
            Ok(a) => a.folders().await.map(|f| f.iter().any(|f| f.name == name)),
            Err(e) => Err(e),
        };
        match exists {
            Ok(true) => {}
            Ok(false) => {
                out.extend_from_slice(
                    format!("{tag} NO [TRYCREATE] No such mailbox\r\n").as_bytes(),
                );
                return;
            }
            Err(e) => {
                out.extend_from_slice(format!("{tag} {}\r\n", no(&e)).as_bytes());
                return;
            }
        }
        if body.len() as u64 > self.config.max_append {
            refuse("append_too_big");
            out.extend_from_slice(format!("{tag} NO [TOOBIG] Message too large\r\n").as_bytes());
            return;
        }
        let result = match self.account() {
            Ok(a) => a.append(name, &flags, date, body).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(appended) => {
                tracing::info!(user = %self.user, folder = %name, uid = appended.uid, "IMAP APPEND stored");
                if self.selected.as_ref().is_some_and(|s| s.name == name) {
                    self.refresh(out, false).await;
                }
                out.extend_from_slice(format!("{tag} OK APPEND completed\r\n").as_bytes());
            }
            Err(e) => out.extend_from_slice(format!("{tag} {}\r\n", no(&e)).as_bytes()),
        }
    }

    /// RFC 2177: reports changes about every `idle_poll` until the client sends DONE.
    pub(crate) async fn idle<R, W>(
        &mut self,
        tag: &str,
        reader: &mut Reader<R>,
        writer: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<Flow>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        writer.write_all(b"+ idling\r\n").await?;
        writer.flush().await?;
        let deadline = tokio::time::Instant::now() + self.config.idle_timeout;
        loop {
            let line = tokio::select! {
                l = reader.read_line(MAX_COMMAND_LINE) => l?,
                _ = tokio::time::sleep(self.config.idle_poll) => {
                    if tokio::time::Instant::now() >= deadline {
                        refuse("timeout");
                        writer.write_all(b"* BYE Autologout; idle for too long\r\n").await?;
                        return Ok(Flow::Logout);
                    }
                    let mut updates = Vec::new();
                    self.refresh(&mut updates, true).await;
                    if !updates.is_empty() {
                        writer.write_all(&updates).await?;
                        writer.flush().await?;
                    }
                    continue;
                }
            };
            match line {
                None => return Ok(Flow::Logout),
                Some(Line::Complete(l)) if l.trim_ascii().eq_ignore_ascii_case(b"DONE") => {
                    out.extend_from_slice(format!("{tag} OK IDLE terminated\r\n").as_bytes());
                }
                Some(_) => {
                    refuse("idle_syntax");
                    out.extend_from_slice(format!("{tag} BAD Expected DONE\r\n").as_bytes());
                }
            }
            return Ok(Flow::Continue);
        }
    }
}
