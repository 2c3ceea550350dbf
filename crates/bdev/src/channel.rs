//! Per-thread I/O channels.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use vbdev_virtio::DmaBuf;

use crate::bdev::{BdevInfo, Completion, IoError, IoOp, IoStatus, Request};
use crate::error::{Error, RejectReason, Result};

/// A module's side of a channel: one device queue, owned by one thread.
///
/// The hot-path methods (`try_submit`, `flush`, `reap`) must not block, allocate or lock.
pub trait ChannelBackend: Send + fmt::Debug {
    /// Writes the request's descriptors, or gives it back when the queue has no room now.
    /// The request was validated by [`IoChannel::submit`].
    ///
    /// # Errors
    /// The request, untouched, when the queue is full.
    fn try_submit(&mut self, req: Request) -> std::result::Result<(), Request>;

    /// Makes submitted requests visible to the device, with at most one notification.
    fn flush(&mut self);

    /// Moves finished requests into `out`; returns how many it wrote.
    fn reap(&mut self, out: &mut [Completion]) -> usize;

    /// Requests accepted and not yet completed.
    fn in_flight(&self) -> usize;

    /// Whether the device can reach `buf`.
    fn buffer_visible(&self, buf: &DmaBuf) -> bool;

    /// The device is gone: every in-flight request completes with an error.
    fn is_removed(&self) -> bool;

    /// Sleeps until the device signals a completion or `timeout` passes (interrupt mode).
    fn wait(&mut self, timeout: Duration);

    /// The device's size in blocks now, for devices that can change size (SCSI
    /// capacity changes); `None` keeps the size the bdev had when the channel opened.
    fn num_blocks(&self) -> Option<u64> {
        None
    }
}

/// A request [`IoChannel::submit`] refused, given back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: RejectReason,
    /// The request, untouched (its buffer is still yours).
    pub request: Request,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// One thread's I/O queue to a bdev.
///
/// `submit` validates a request and hands it to the device queue, or keeps it in a FIFO
/// when the queue is full; `poll` publishes everything submitted with one doorbell,
/// collects completions and moves waiting requests into the space they freed. Requests
/// go to the device in submission order. Nothing here locks; a channel is `Send`, not
/// `Sync`.
#[derive(Debug)]
pub struct IoChannel {
    backend: Box<dyn ChannelBackend>,
    fifo: VecDeque<Request>,
    ready: VecDeque<Completion>,
    /// A request went to the backend since its last flush.
    unflushed: bool,
    block_size: u64,
    num_blocks: u64,
    read_only: bool,
    flush: bool,
    unmap: bool,
    write_zeroes: bool,
}

impl IoChannel {
    pub(crate) fn new(info: &BdevInfo, backend: Box<dyn ChannelBackend>) -> Self {
        Self {
            backend,
            fifo: VecDeque::with_capacity(usize::from(info.queue_size)),
            ready: VecDeque::with_capacity(64),
            unflushed: false,
            block_size: u64::from(info.block_size),
            num_blocks: info.num_blocks,
            read_only: info.read_only,
            flush: info.flush,
            unmap: info.unmap,
            write_zeroes: info.write_zeroes,
        }
    }

    fn check(&self, req: &mut Request) -> std::result::Result<(), RejectReason> {
        if self.backend.is_removed() {
            return Err(RejectReason::Removed);
        }
        let op = req.op;
        if op.modifies() && self.read_only {
            return Err(RejectReason::ReadOnly { op });
        }
        match op {
            IoOp::Read | IoOp::Write => {
                let len = req.buf.as_ref().map_or(0, |b| b.len() as u64);
                let blocks = len / self.block_size;
                if len == 0 || len % self.block_size != 0 {
                    return Err(RejectReason::BufferSize {
                        expected: req.num_blocks.saturating_mul(self.block_size),
                        actual: len,
                    });
                }
                if req.num_blocks != 0 && req.num_blocks != blocks {
                    return Err(RejectReason::BufferSize {
                        expected: req.num_blocks.saturating_mul(self.block_size),
                        actual: len,
                    });
                }
                req.num_blocks = blocks;
                if let Some(buf) = &req.buf {
                    if !self.backend.buffer_visible(buf) {
                        return Err(RejectReason::BufferNotVisible {
                            region: buf.region().0,
                        });
                    }
                }
            }
            IoOp::Unmap | IoOp::WriteZeroes => {
                let supported = if op == IoOp::Unmap {
                    self.unmap
                } else {
                    self.write_zeroes
                };
                if !supported {
                    return Err(RejectReason::Unsupported { op });
                }
                if req.num_blocks == 0 {
                    return Err(RejectReason::Empty { op, num_blocks: 0 });
                }
                if req.buf.is_some() {
                    return Err(RejectReason::BufferSize {
                        expected: 0,
                        actual: req.buf.as_ref().map_or(0, |b| b.len() as u64),
                    });
                }
            }
            IoOp::Flush => return Ok(()),
        }
        let capacity = self.backend.num_blocks().unwrap_or(self.num_blocks);
        match req.offset_blocks.checked_add(req.num_blocks) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(RejectReason::OutOfRange {
                offset_blocks: req.offset_blocks,
                num_blocks: req.num_blocks,
                capacity,
            }),
        }
    }

    /// Submits a request. It reaches the device at the next [`Self::poll`]; when the
    /// queue is full it waits in this channel and goes out as space frees.
    ///
    /// A flush on a device without a volatile write cache completes at once.
    ///
    /// # Errors
    /// [`Rejected`] with the request when it is invalid (read-only device, out of range,
    /// bad buffer size, unsupported operation, device removed); nothing was sent.
    pub fn submit(&mut self, mut req: Request) -> std::result::Result<(), Rejected> {
        if let Err(error) = self.check(&mut req) {
            return Err(Rejected {
                error,
                request: req,
            });
        }
        if req.op == IoOp::Flush && !self.flush {
            self.ready.push_back(Completion {
                cookie: req.cookie,
                status: IoStatus::Success,
                buf: None,
            });
            return Ok(());
        }
        if self.fifo.is_empty() {
            match self.backend.try_submit(req) {
                Ok(()) => self.unflushed = true,
                Err(req) => self.fifo.push_back(req),
            }
        } else {
            self.fifo.push_back(req);
        }
        Ok(())
    }

    /// Sends what was submitted (one doorbell at most), then moves finished requests into
    /// `out` and returns how many. Never blocks.
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            out[n] = c;
            n += 1;
        }
        if std::mem::take(&mut self.unflushed) {
            self.backend.flush();
        }
        n += self.backend.reap(&mut out[n..]);
        if !self.fifo.is_empty() && self.backend.is_removed() {
            while let Some(req) = self.fifo.pop_front() {
                self.ready.push_back(Completion {
                    cookie: req.cookie,
                    status: IoStatus::Failed(IoError::Removed),
                    buf: req.buf,
                });
            }
        }
        while let Some(req) = self.fifo.pop_front() {
            if let Err(req) = self.backend.try_submit(req) {
                self.fifo.push_front(req);
                break;
            }
        }
        // Publishes what the FIFO moved and the children of a split request that freed
        // slots let the backend send (cheap when there is nothing new).
        self.backend.flush();
        n
    }

    /// Requests submitted and not yet returned by [`Self::poll`].
    pub fn pending(&self) -> usize {
        self.backend.in_flight() + self.fifo.len() + self.ready.len()
    }

    /// Requests waiting in this channel for room in the device queue.
    pub fn queued(&self) -> usize {
        self.fifo.len()
    }

    /// The device is gone.
    pub fn is_removed(&self) -> bool {
        self.backend.is_removed()
    }

    /// Sleeps until the device signals a completion or `timeout` passes, for callers
    /// that run their own poll loop and would rather sleep than spin. Returns at once
    /// when completions are waiting for [`Self::poll`].
    pub fn wait(&mut self, timeout: Duration) {
        if self.ready.is_empty() {
            self.backend.wait(timeout);
        }
    }

    /// Polls until one request completes, sleeping on the device's interrupt between
    /// polls. Completions beyond the first stay for the next call.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when nothing is pending.
    pub fn wait_one(&mut self) -> Result<Completion> {
        if self.pending() == 0 {
            return Err(Error::WaitTimeout(Duration::ZERO));
        }
        let mut out = [Completion::default()];
        loop {
            if self.poll(&mut out) == 1 {
                let [c] = out;
                return Ok(c);
            }
            self.backend.wait(Duration::from_millis(100));
        }
    }

    /// Polls until every pending request completes or `timeout` passes, returning all
    /// completions.
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when requests are still pending at the deadline.
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<Completion>> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        let mut out: Vec<Completion> = (0..64).map(|_| Completion::default()).collect();
        while self.pending() > 0 {
            let n = self.poll(&mut out);
            all.extend(out[..n].iter_mut().map(std::mem::take));
            if n == 0 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::WaitTimeout(timeout));
                }
                self.backend.wait(left.min(Duration::from_millis(100)));
            }
        }
        Ok(all)
    }
}
