//! A connection's pending output: its own bytes and frames shared with other receivers,
//! kept in order and written with one `write_vectored` per loop turn.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// A frame encoded once and sent to many connections (a broadcast).
pub type SharedFrame = Rc<[u8]>;

#[derive(Debug)]
enum Segment {
    /// Bytes of `Outbox::own` up to this offset.
    Own(usize),
    Shared(SharedFrame),
    /// A whole buffer handed over without a copy (an assembled message being echoed).
    Moved(Vec<u8>),
}

/// Pending output, in order. Own bytes are appended to one buffer; a shared frame is queued by
/// reference, so a broadcast costs each receiver a pointer rather than a copy.
///
/// The queue is boxed and exists only while output is pending or its buffers are kept for the
/// next message: an idle connection's outbox is one null pointer (8 bytes instead of ~100).
/// [`Outbox::shrink`] gives the box back.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Option<Box<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    own: Vec<u8>,
    /// Bytes of `own` already written.
    own_sent: usize,
    /// Bytes of the front shared frame already written.
    shared_sent: usize,
    segments: VecDeque<Segment>,
    /// A moved-in buffer that has been written, kept for the owner to reuse.
    reclaimed: Vec<u8>,
    /// Bytes queued and not yet written, kept as a count so that checking it costs nothing.
    pending: usize,
}

/// Above this, a drained buffer is given back rather than kept for the next message. Below it,
/// a busy connection reuses its buffer; the server's idle sweep ([`Outbox::shrink`]) takes it
/// back once the connection goes quiet.
pub const KEEP_CAPACITY: usize = 1024 * 1024;

/// At most this many slices go to one `write_vectored` (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 64;

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.pending)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.as_ref().is_none_or(|q| q.segments.is_empty())
    }

    /// The buffer to append own bytes to; call [`Outbox::commit`] after writing into it.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.queue().own
    }

    /// Records bytes appended through [`Outbox::buf`] as the next thing to send.
    pub fn commit(&mut self) {
        if let Some(q) = &mut self.queue {
            q.commit();
        }
    }

    /// Appends own bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.queue().push(bytes);
    }

    /// Queues a frame shared with other connections.
    pub fn push_shared(&mut self, frame: SharedFrame) {
        if !frame.is_empty() {
            self.queue().push_shared(frame);
        }
    }

    /// Queues a buffer by moving it in: no copy. Once written it may come back through
    /// [`Outbox::take_reclaimed`].
    pub fn push_moved(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.queue().push_moved(bytes);
        }
    }

    /// A written, emptied buffer from [`Outbox::push_moved`], if one is kept.
    pub fn take_reclaimed(&mut self) -> Vec<u8> {
        self.queue
            .as_mut()
            .map_or_else(Vec::new, |q| std::mem::take(&mut q.reclaimed))
    }

    /// Writes as much as the writer takes. `Ok(true)` when everything is out,
    /// `Ok(false)` when the writer would block with bytes still pending.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        match &mut self.queue {
            Some(q) => q.flush_to(w),
            None => Ok(true),
        }
    }

    /// Gives back all memory once nothing is pending (for connections gone quiet); with
    /// output pending, only the buffer kept for reuse.
    pub fn shrink(&mut self) {
        if let Some(q) = &mut self.queue {
            if q.segments.is_empty() {
                self.queue = None;
            } else {
                q.reclaimed = Vec::new();
            }
        }
    }
}

impl Queue {
    fn commit(&mut self) {
        let end = self.own.len();
        if let Some(Segment::Own(e)) = self.segments.back_mut() {
            self.pending += end - *e;
            *e = end;
        } else {
            let last = self.last_own_end();
            if last < end {
                self.pending += end - last;
                self.segments.push_back(Segment::Own(end));
            }
        }
    }

    fn last_own_end(&self) -> usize {
        self.segments
            .iter()
            .rev()
            .find_map(|s| match s {
                Segment::Own(e) => Some(*e),
                _ => None,
            })
            .unwrap_or(self.own_sent)
    }

    fn push(&mut self, bytes: &[u8]) {
        self.own.extend_from_slice(bytes);
        self.commit();
    }

    /// `frame` is not empty.
    fn push_shared(&mut self, frame: SharedFrame) {
        self.pending += frame.len();
        self.segments.push_back(Segment::Shared(frame));
    }

    /// `bytes` is not empty.
    fn push_moved(&mut self, bytes: Vec<u8>) {
        self.pending += bytes.len();
        self.segments.push_back(Segment::Moved(bytes));
    }

    fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<bool> {
        while !self.segments.is_empty() {
            let n = {
                let mut slices: [IoSlice<'_>; MAX_SLICES] = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                let mut own_at = self.own_sent;
                for (i, seg) in self.segments.iter().enumerate().take(MAX_SLICES) {
                    slices[i] = match seg {
                        Segment::Own(end) => {
                            let s = IoSlice::new(&self.own[own_at..*end]);
                            own_at = *end;
                            s
                        }
                        Segment::Shared(f) if i == 0 => IoSlice::new(&f[self.shared_sent..]),
                        Segment::Shared(f) => IoSlice::new(f),
                        Segment::Moved(v) if i == 0 => IoSlice::new(&v[self.shared_sent..]),
                        Segment::Moved(v) => IoSlice::new(v),
                    };
                    count = i + 1;
                }
                // One slice is the common case (an echo): a plain write spares the kernel
                // the iovec import.
                let written = if count == 1 {
                    w.write(&slices[0])
                } else {
                    w.write_vectored(&slices[..count])
                };
                match written {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.advance(n);
        }
        Ok(true)
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            match self.segments.front() {
                Some(Segment::Own(end)) => {
                    let left = end - self.own_sent;
                    if n < left {
                        self.own_sent += n;
                        return;
                    }
                    n -= left;
                    self.own_sent = *end;
                    self.segments.pop_front();
                }
                Some(Segment::Shared(_) | Segment::Moved(_)) => {
                    let left = self.front_len() - self.shared_sent;
                    if n < left {
                        self.shared_sent += n;
                        return;
                    }
                    n -= left;
                    self.shared_sent = 0;
                    if let Some(Segment::Moved(mut v)) = self.segments.pop_front() {
                        if v.capacity() <= KEEP_CAPACITY && v.capacity() > self.reclaimed.capacity()
                        {
                            v.clear();
                            self.reclaimed = v;
                        }
                    }
                }
                None => return,
            }
        }
        if self.segments.is_empty() {
            self.own.clear();
            self.own_sent = 0;
            if self.own.capacity() > KEEP_CAPACITY {
                self.own = Vec::new();
            }
        }
    }

    fn front_len(&self) -> usize {
        match self.segments.front() {
            Some(Segment::Shared(f)) => f.len(),
            Some(Segment::Moved(v)) => v.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call and blocks every other call.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = (self.step - n).min(b.len());
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn keeps_order_across_own_and_shared_with_partial_writes() {
        for step in 1..12 {
            let mut o = Outbox::new();
            let shared: SharedFrame = Rc::from(&b"SHARED"[..]);
            o.push(b"one,");
            o.push_shared(shared.clone());
            o.push(b",two,");
            o.push(b"three");
            o.push_shared(shared.clone());
            o.push_moved(b"MOVED".to_vec());
            o.push(b"!");
            assert_eq!(o.len(), 4 + 6 + 5 + 5 + 6 + 5 + 1);
            let mut w = Trickle {
                got: Vec::new(),
                step,
                calls: 0,
            };
            let mut rounds = 0;
            while !o.flush_to(&mut w).unwrap() {
                rounds += 1;
                assert!(rounds < 100);
            }
            assert_eq!(w.got, b"one,SHARED,two,threeSHAREDMOVED!", "step {step}");
            assert!(o.is_empty());
            assert!(o.take_reclaimed().capacity() >= 5);
            assert_eq!(o.len(), 0);
        }
    }

    #[test]
    fn appending_while_partly_written() {
        let mut o = Outbox::new();
        o.push(b"abcdef");
        let mut w = Trickle {
            got: Vec::new(),
            step: 2,
            calls: 0,
        };
        assert!(!o.flush_to(&mut w).unwrap());
        o.push(b"gh");
        o.push_shared(Rc::from(&b"XY"[..]));
        while !o.flush_to(&mut w).unwrap() {}
        assert_eq!(w.got, b"abcdefghXY");
    }

    #[test]
    fn shrink_gives_everything_back_only_when_drained() {
        let mut o = Outbox::new();
        assert!(o.queue.is_none());
        o.push(b"abcdef");
        let mut w = Trickle {
            got: Vec::new(),
            step: 2,
            calls: 0,
        };
        assert!(!o.flush_to(&mut w).unwrap());
        o.shrink();
        assert_eq!(o.len(), 4, "pending output survives a shrink");
        while !o.flush_to(&mut w).unwrap() {}
        assert_eq!(w.got, b"abcdef");
        assert!(o.queue.is_some(), "a busy connection keeps its buffer");
        o.shrink();
        assert!(o.queue.is_none());
        assert!(o.is_empty());
        assert_eq!(o.len(), 0);
        assert!(o.flush_to(&mut w).unwrap());
    }
}
