//! The selected state's commands (FETCH, STORE, SEARCH, EXPUNGE, CLOSE, UNSELECT).

use std::sync::Arc;

use bytes::Bytes;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Charset;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::flag::{StoreResponse, StoreType};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::mime::Parsed;
use crate::session::{Cached, Session, no};
use crate::structures::Key;
use crate::{Account, Backend, FlagOp, fetch, mime, refuse, search, seqset};

/// Messages asked of the store in one request.
const BATCH: usize = 100;
/// Message bytes a session keeps cached.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Bytes of response buffered before writing.
const FLUSH_AT: usize = 256 * 1024;

impl<B: Backend> Session<'_, B> {
    pub(crate) async fn selected_command<W: AsyncWrite + Unpin + Send>(
        &mut self,
        tag: &str,
        body: CommandBody<'_>,
        writer: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        match body {
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
            } => {
                let items = fetch::items(&macro_or_item_names);
                let msgs = self
                    .selected
                    .as_ref()
                    .map(|s| s.msgs.as_slice())
                    .unwrap_or(&[]);
                match seqset::resolve(&sequence_set, msgs, uid) {
                    None => {
                        refuse("bad_sequence");
                        out.extend_from_slice(
                            format!("{tag} BAD Invalid message sequence number\r\n").as_bytes(),
                        );
                    }
                    Some(indices) => {
                        self.fetch(tag, &indices, &items, uid, writer, out).await?;
                    }
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
            } => {
                let msgs = self
                    .selected
                    .as_ref()
                    .map(|s| s.msgs.as_slice())
                    .unwrap_or(&[]);
                let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
                match seqset::resolve(&sequence_set, msgs, uid) {
                    None => {
                        refuse("bad_sequence");
                        out.extend_from_slice(
                            format!("{tag} BAD Invalid message sequence number\r\n").as_bytes(),
                        );
                    }
                    Some(_) if read_only => {
                        out.extend_from_slice(
                            format!("{tag} NO [READ-ONLY] Mailbox is read-only\r\n").as_bytes(),
                        );
                    }
                    Some(indices) => {
                        let op = match kind {
                            StoreType::Add => FlagOp::Add,
                            StoreType::Remove => FlagOp::Remove,
                            StoreType::Replace => FlagOp::Replace,
                        };
                        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
                        let silent = matches!(response, StoreResponse::Silent);
                        self.store(tag, &indices, op, &flags, silent, uid, out)
                            .await;
                    }
                }
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                let charset_ok = charset.as_ref().is_none_or(|c| {
                    let c = match c {
                        Charset::Atom(a) => a.as_ref().to_ascii_uppercase(),
                        Charset::Quoted(q) => q.as_ref().to_ascii_uppercase(),
                    };
                    c == "US-ASCII" || c == "UTF-8"
                });
                if !charset_ok {
                    out.extend_from_slice(
                        format!("{tag} NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n")
                            .as_bytes(),
                    );
                } else {
                    self.search(tag, &criteria, uid, out).await;
                }
            }
            CommandBody::Expunge => {
                let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
                if read_only {
                    out.extend_from_slice(
                        format!("{tag} NO [READ-ONLY] Mailbox is read-only\r\n").as_bytes(),
                    );
                } else {
                    match self.expunge_deleted().await {
                        Ok(()) => {
                            self.refresh(out, true).await;
                            out.extend_from_slice(
                                format!("{tag} OK EXPUNGE completed\r\n").as_bytes(),
                            );
                        }
                        Err(e) => out.extend_from_slice(format!("{tag} {e}\r\n").as_bytes()),
                    }
                }
            }
            CommandBody::Close => {
                let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
                let result = if read_only {
                    Ok(())
                } else {
                    self.expunge_deleted().await
                };
                self.selected = None;
                match result {
                    Ok(()) => {
                        out.extend_from_slice(format!("{tag} OK CLOSE completed\r\n").as_bytes())
                    }
                    Err(e) => out.extend_from_slice(format!("{tag} {e}\r\n").as_bytes()),
                }
            }
            CommandBody::Unselect => {
                self.selected = None;
                out.extend_from_slice(format!("{tag} OK UNSELECT completed\r\n").as_bytes());
            }
            _ => {
                refuse("unsupported");
                out.extend_from_slice(
                    format!("{tag} NO [CANNOT] Not supported here\r\n").as_bytes(),
                );
            }
        }
        Ok(())
    }

    /// Removes the messages of the view flagged `\Deleted` from the store.
    async fn expunge_deleted(&mut self) -> Result<(), String> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        let uids: Vec<u32> = sel
            .msgs
            .iter()
            .filter(|m| m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Deleted")))
            .map(|m| m.uid)
            .collect();
        if uids.is_empty() {
            return Ok(());
        }
        let account = self.account().map_err(|e| no(&e))?;
        match account.expunge(&sel.name, &uids).await {
            Ok(gone) => {
                tracing::info!(user = %self.user, folder = %sel.name, expunged = gone.len(), "IMAP EXPUNGE");
                Ok(())
            }
            Err(e) => Err(no(&e)),
        }
    }

    /// The computed structures of the messages at these indices: from the node's cache, the rest
    /// parsed from bodies read from the store in one request (and cached for every session).
    async fn structures(&mut self, indices: &[usize]) -> Result<Vec<Option<Arc<Parsed>>>, String> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(vec![None; indices.len()]);
        };
        let keys: Vec<Option<Key>> = indices
            .iter()
            .map(|i| {
                sel.msgs.get(*i).map(|m| Key {
                    user: self.user.clone(),
                    folder: sel.name.clone(),
                    uidvalidity: sel.uidvalidity,
                    uid: m.uid,
                    size: m.size,
                    internal_date_ms: m.internal_date_ms,
                })
            })
            .collect();
        let mut found: Vec<Option<Arc<Parsed>>> = keys
            .iter()
            .map(|k| k.as_ref().and_then(|k| self.config.structures.get(k)))
            .collect();
        let missing: Vec<(usize, u32)> = keys
            .iter()
            .enumerate()
            .filter(|(k, _)| found[*k].is_none())
            .filter_map(|(k, key)| key.as_ref().map(|key| (k, key.uid)))
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let uids: Vec<u32> = missing.iter().map(|(_, u)| *u).collect();
        let bodies = self.bodies(&uids, true).await?;
        for ((k, _), body) in missing.iter().zip(bodies) {
            if let Some(parsed) = body.and_then(|b| b.parsed.clone())
                && let Some(key) = keys.get(*k).cloned().flatten()
            {
                self.config.structures.put(key, parsed.clone());
                found[*k] = Some(parsed);
            }
        }
        Ok(found)
    }

    /// Bodies (and structures, with `parse`) of these messages: from the cache, the rest from the
    /// store in one request.
    async fn bodies(
        &mut self,
        uids: &[u32],
        parse: bool,
    ) -> Result<Vec<Option<Arc<Cached>>>, String> {
        let folder = match self.selected.as_ref() {
            Some(s) => s.name.clone(),
            None => return Ok(vec![None; uids.len()]),
        };
        let missing: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| !self.cache.contains_key(u))
            .collect();
        let mut fetched: Vec<(u32, Bytes)> = Vec::new();
        if !missing.is_empty() {
            let account = self.account().map_err(|e| no(&e))?;
            fetched = account.fetch(&folder, &missing).await.map_err(|e| no(&e))?;
        }
        metrics::counter!("fabric_imap_fetched_messages_total").increment(fetched.len() as u64);
        let mut fresh: std::collections::HashMap<u32, Arc<Cached>> = fetched
            .into_iter()
            .map(|(uid, raw)| (uid, Arc::new(Cached { raw, parsed: None })))
            .collect();
        let mut result = Vec::with_capacity(uids.len());
        for uid in uids {
            let entry = self.cache.get(uid).cloned().or_else(|| fresh.remove(uid));
            let entry = match entry {
                Some(e) if parse && e.parsed.is_none() => {
                    let parsed = Arc::new(mime::parse(&e.raw));
                    let e = Arc::new(Cached {
                        raw: e.raw.clone(),
                        parsed: Some(parsed),
                    });
                    Some(e)
                }
                other => other,
            };
            if let Some(e) = &entry
                && parse
                && self.cache.get(uid).is_none_or(|c| c.parsed.is_none())
            {
                if self.cache_bytes + e.raw.len() > CACHE_BYTES {
                    self.cache.clear();
                    self.cache_bytes = 0;
                }
                self.cache_bytes += e.raw.len();
                self.cache.insert(*uid, e.clone());
            }
            result.push(entry);
        }
        Ok(result)
    }

    async fn fetch<W: AsyncWrite + Unpin + Send>(
        &mut self,
        tag: &str,
        indices: &[usize],
        items: &[MessageDataItemName<'_>],
        uid: bool,
        writer: &mut W,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let need_body = items.iter().any(fetch::needs_body);
        let need_parse = items.iter().any(fetch::needs_parse);
        // ENVELOPE/BODY/BODYSTRUCTURE without the bytes themselves (a client's first sync): from the
        // node's structure cache, bodies read only for what it does not hold yet.
        let structure_only = need_parse && !items.iter().any(fetch::needs_raw);
        let read_only = self.selected.as_ref().is_some_and(|s| s.read_only);
        let sets_seen = !read_only && items.iter().any(fetch::sets_seen);
        let mut failed = false;
        for chunk in indices.chunks(BATCH) {
            let uids: Vec<u32> = match self.selected.as_ref() {
                Some(s) => chunk
                    .iter()
                    .filter_map(|i| s.msgs.get(*i).map(|m| m.uid))
                    .collect(),
                None => Vec::new(),
            };
            let structures = if structure_only {
                match self.structures(chunk).await {
                    Ok(p) => p,
                    Err(e) => {
                        out.extend_from_slice(format!("{tag} {e}\r\n").as_bytes());
                        return Ok(());
                    }
                }
            } else {
                Vec::new()
            };
            let bodies = if need_body && !structure_only {
                match self.bodies(&uids, need_parse).await {
                    Ok(b) => b,
                    Err(e) => {
                        out.extend_from_slice(format!("{tag} {e}\r\n").as_bytes());
                        return Ok(());
                    }
                }
            } else {
                vec![None; uids.len()]
            };
            let mut seen_now = vec![false; uids.len()];
            if sets_seen {
                self.mark_seen(&uids, &bodies, &mut seen_now).await;
            }
            let Some(sel) = self.selected.as_ref() else {
                break;
            };
            for (k, i) in chunk.iter().enumerate() {
                let Some(meta) = sel.msgs.get(*i) else {
                    continue;
                };
                let body = bodies.get(k).and_then(|b| b.as_ref());
                let structure = structures.get(k).and_then(|p| p.as_deref());
                if structure_only {
                    if structure.is_none() {
                        failed = true;
                        continue;
                    }
                    fetch::render(out, i + 1, meta, items, uid, false, None, structure);
                    continue;
                }
                if need_body && body.is_none() {
                    // Expunged by another session since our view was taken (RFC 3501 7.4.1 lets
                    // us say so only later).
                    failed = true;
                    continue;
                }
                fetch::render(
                    out,
                    i + 1,
                    meta,
                    items,
                    uid,
                    seen_now[k],
                    body.map(|b| &b.raw[..]),
                    body.and_then(|b| b.parsed.as_deref()),
                );
            }
            if out.len() >= FLUSH_AT {
                writer.write_all(out).await?;
                out.clear();
            }
        }
        if failed && !uid {
            out.extend_from_slice(
                format!("{tag} NO Some messages were expunged meanwhile\r\n").as_bytes(),
            );
        } else {
            out.extend_from_slice(format!("{tag} OK FETCH completed\r\n").as_bytes());
        }
        Ok(())
    }

    /// Sets `\Seen` on the messages among `uids` whose bodies are about to be sent without it.
    async fn mark_seen(
        &mut self,
        uids: &[u32],
        bodies: &[Option<Arc<Cached>>],
        seen_now: &mut [bool],
    ) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let folder = sel.name.clone();
        let todo: Vec<(usize, u32)> = uids
            .iter()
            .enumerate()
            .filter(|(k, u)| {
                bodies.get(*k).is_some_and(|b| b.is_some())
                    && sel
                        .msgs
                        .binary_search_by_key(*u, |m| m.uid)
                        .ok()
                        .and_then(|i| sel.msgs.get(i))
                        .is_some_and(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
            })
            .map(|(k, u)| (k, *u))
            .collect();
        let seen = vec!["\\Seen".to_string()];
        for (k, uid) in todo {
            let result = match self.account() {
                Ok(a) => a.store_flags(&folder, uid, FlagOp::Add, &seen).await,
                Err(e) => Err(e),
            };
            if let (Ok(flags), Some(sel)) = (result, self.selected.as_mut())
                && let Ok(i) = sel.msgs.binary_search_by_key(&uid, |m| m.uid)
            {
                sel.msgs[i].flags = flags;
                seen_now[k] = true;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &mut self,
        tag: &str,
        indices: &[usize],
        op: FlagOp,
        flags: &[String],
        silent: bool,
        uid: bool,
        out: &mut Vec<u8>,
    ) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let folder = sel.name.clone();
        let targets: Vec<(usize, u32)> = indices
            .iter()
            .filter_map(|i| sel.msgs.get(*i).map(|m| (*i, m.uid)))
            .collect();
        let mut errors = 0usize;
        for (i, u) in targets {
            let result = match self.account() {
                Ok(a) => a.store_flags(&folder, u, op, flags).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(new_flags) => {
                    let Some(sel) = self.selected.as_mut() else {
                        return;
                    };
                    if let Some(m) = sel.msgs.get_mut(i) {
                        m.flags = new_flags;
                        if !silent {
                            out.extend_from_slice(format!("* {} FETCH (", i + 1).as_bytes());
                            fetch::flags(out, &m.flags);
                            if uid {
                                out.extend_from_slice(format!(" UID {}", m.uid).as_bytes());
                            }
                            out.extend_from_slice(b")\r\n");
                        }
                    }
                }
                Err(_) => errors += 1,
            }
        }
        if errors == 0 {
            out.extend_from_slice(format!("{tag} OK STORE completed\r\n").as_bytes());
        } else {
            out.extend_from_slice(
                format!("{tag} NO Some flags could not be changed\r\n").as_bytes(),
            );
        }
    }

    async fn search(
        &mut self,
        tag: &str,
        key: &imap_codec::imap_types::search::SearchKey<'_>,
        uid: bool,
        out: &mut Vec<u8>,
    ) {
        let all: Vec<u32> = self
            .selected
            .as_ref()
            .map(|s| s.msgs.iter().map(|m| m.uid).collect())
            .unwrap_or_default();
        let mut raws: Vec<Option<Arc<Cached>>> = vec![None; all.len()];
        if search::needs_body(key) {
            raws.clear();
            for chunk in all.chunks(BATCH) {
                match self.bodies(chunk, false).await {
                    Ok(b) => raws.extend(b),
                    Err(e) => {
                        out.extend_from_slice(format!("{tag} {e}\r\n").as_bytes());
                        return;
                    }
                }
            }
        }
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let mut hits = Vec::new();
        for (i, meta) in sel.msgs.iter().enumerate() {
            let c = search::Candidate {
                index: i,
                meta,
                all: &sel.msgs,
                raw: raws.get(i).and_then(|r| r.as_ref()).map(|r| &r.raw[..]),
            };
            if search::matches(key, &c) {
                hits.push(if uid { meta.uid } else { i as u32 + 1 });
            }
        }
        out.extend_from_slice(b"* SEARCH");
        for h in hits {
            out.extend_from_slice(format!(" {h}").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(format!("{tag} OK SEARCH completed\r\n").as_bytes());
    }
}
