//! A shipment on the wire, without copying its batches.
//!
//! The encoding is postcard's for [`Shipment`] (varint epoch, varint count, then for each batch its
//! varint LSN, varint length and bytes), written and read here by hand so that the batches' bytes are
//! never copied in user space: the sender's request body is the ring's own `Bytes` with small
//! headers between them (one `writev`), and the receiver's batches are slices of the one buffer the
//! body was read into. Through `postcard::to_stdvec` and `from_bytes` every shipment was copied
//! three or four times more: into a `Vec` grown by doubling on the sender, by the body's `to_vec` and
//! into a `Bytes` per batch on the receiver. The same-site mirror's shipments are 100 ms of writes,
//! about 6 MiB each; memmove and malloc were about a tenth of the sending store's CPU at c=64.

use bytes::Bytes;

use crate::error::StoreError;
use crate::ops::Shipment;

/// Longest varint of a `u64`.
const VARINT_MAX: usize = 10;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*at`, moving past it.
fn take_varint(b: &[u8], at: &mut usize) -> Result<u64, StoreError> {
    let mut v: u64 = 0;
    for i in 0..VARINT_MAX {
        let Some(&byte) = b.get(*at) else {
            return Err(bad("it ends inside a number"));
        };
        *at += 1;
        let bits = u64::from(byte & 0x7f);
        if i == VARINT_MAX - 1 && byte > 1 {
            return Err(bad("a number is too large"));
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("a number is too long"))
}

fn bad(why: &str) -> StoreError {
    StoreError::BadRequest(format!("undecodable shipment: {why}"))
}

impl Shipment {
    /// The encoded shipment as pieces to send in order, and their total length. The batches are the
    /// pieces between the headers, shared, not copied.
    pub fn to_chunks(&self) -> (Vec<Bytes>, usize) {
        let mut chunks = Vec::with_capacity(2 * self.batches.len() + 1);
        let mut head = Vec::with_capacity(2 * VARINT_MAX);
        put_varint(&mut head, self.epoch);
        put_varint(&mut head, self.batches.len() as u64);
        for (lsn, batch) in &self.batches {
            put_varint(&mut head, *lsn);
            put_varint(&mut head, batch.len() as u64);
            chunks.push(Bytes::from(std::mem::replace(
                &mut head,
                Vec::with_capacity(2 * VARINT_MAX),
            )));
            if !batch.is_empty() {
                chunks.push(batch.clone());
            }
        }
        if !head.is_empty() {
            chunks.push(Bytes::from(head));
        }
        let len = chunks.iter().map(Bytes::len).sum();
        (chunks, len)
    }

    /// Reads a shipment from the body it came in; its batches are slices of `body`.
    pub fn from_body(body: Bytes) -> Result<Shipment, StoreError> {
        let mut at = 0;
        let epoch = take_varint(&body, &mut at)?;
        let count = take_varint(&body, &mut at)?;
        // Every batch takes at least two bytes: a count beyond that is a lie, not an allocation.
        if count > (body.len() as u64) / 2 {
            return Err(bad("it counts more batches than it holds"));
        }
        let mut batches = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let lsn = take_varint(&body, &mut at)?;
            let len = take_varint(&body, &mut at)?;
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| at.checked_add(len))
                .filter(|end| *end <= body.len())
                .ok_or_else(|| bad("a batch runs past its end"))?;
            batches.push((lsn, body.slice(at..end)));
            at = end;
        }
        if at != body.len() {
            return Err(bad("bytes follow its last batch"));
        }
        Ok(Shipment { epoch, batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Shipment {
        Shipment {
            epoch: 300,
            batches: vec![
                (1, Bytes::from_static(b"first")),
                (2, Bytes::new()),
                (u64::MAX, Bytes::from(vec![7u8; 20_000])),
            ],
        }
    }

    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn the_chunks_are_postcards_encoding() -> Result<(), Box<dyn std::error::Error>> {
        for s in [
            sample(),
            Shipment {
                epoch: 0,
                batches: Vec::new(),
            },
        ] {
            let (chunks, len) = s.to_chunks();
            let ours = joined(&chunks);
            assert_eq!(ours.len(), len);
            assert_eq!(ours, postcard::to_stdvec(&s)?);
        }
        Ok(())
    }

    #[test]
    fn a_body_reads_back_as_slices_of_itself() -> Result<(), Box<dyn std::error::Error>> {
        let body = Bytes::from(postcard::to_stdvec(&sample())?);
        let s = Shipment::from_body(body.clone())?;
        assert_eq!(s.epoch, 300);
        let want = sample().batches;
        assert_eq!(s.batches, want);
        // No copy: the big batch points into the body.
        let big = &s.batches[2].1;
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(big.as_ptr() as usize)));
        Ok(())
    }

    #[test]
    fn damaged_bodies_are_refused_not_trusted() -> Result<(), Box<dyn std::error::Error>> {
        let good = postcard::to_stdvec(&sample())?;
        // Cut anywhere: refused.
        for cut in 0..good.len() {
            assert!(Shipment::from_body(Bytes::copy_from_slice(&good[..cut])).is_err());
        }
        // Trailing bytes, a count far beyond the body, an overlong number.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Shipment::from_body(Bytes::from(trailing)).is_err());
        let huge_count = [0x01, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Shipment::from_body(Bytes::copy_from_slice(&huge_count)).is_err());
        let overlong = [0xffu8; 11];
        assert!(Shipment::from_body(Bytes::copy_from_slice(&overlong)).is_err());
        let too_large = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Shipment::from_body(Bytes::copy_from_slice(&too_large)).is_err());
        Ok(())
    }
}
