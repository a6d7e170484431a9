//! Bridges between async HTTP bodies and the blocking `Read`/`Write` the driver works with.
//! Both move one chunk at a time with back-pressure, so a layer is never held in memory.

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::channel::Sender;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Size of the chunks a `Diff` body is sent in.
pub const CHUNK: usize = 64 * 1024;

/// A blocking `Read` over a request body (for `ApplyDiff`). Must be used off the runtime's
/// worker threads (inside `spawn_blocking`).
pub struct BodyReader {
    body: Incoming,
    handle: Handle,
    current: Bytes,
    done: bool,
}

impl BodyReader {
    pub fn new(body: Incoming, handle: Handle) -> Self {
        BodyReader {
            body,
            handle,
            current: Bytes::new(),
            done: false,
        }
    }

    /// Read and discard the rest of the body, so the client sees its upload accepted and the
    /// connection stays usable. Errors do not matter any more at this point.
    pub fn drain(&mut self) {
        let _ = io::copy(self, &mut io::sink());
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.handle.block_on(self.body.frame()) {
                None => self.done = true,
                Some(Ok(frame)) => {
                    // Trailers carry no layer data.
                    if let Ok(data) = frame.into_data() {
                        self.current = data;
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(io::Error::other(format!("reading request body: {e}")));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// A blocking `Write` that feeds a response body (for `Diff`). It tells the handler, through
/// `started`, either that data is about to flow (answer 200 and stream) or that the driver failed
/// before writing anything (answer with an error instead of a truncated tar).
pub struct ChannelWriter {
    sender: Option<Sender<Bytes, io::Error>>,
    handle: Handle,
    started: Option<oneshot::Sender<Result<(), String>>>,
    buf: BytesMut,
}

impl ChannelWriter {
    pub fn new(
        sender: Sender<Bytes, io::Error>,
        handle: Handle,
        started: oneshot::Sender<Result<(), String>>,
    ) -> Self {
        ChannelWriter {
            sender: Some(sender),
            handle,
            started: Some(started),
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn signal_started(&mut self) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Ok(()));
        }
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.signal_started();
        let chunk = self.buf.split().freeze();
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "body already closed"))?;
        self.handle
            .block_on(sender.send_data(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// The driver finished: send what is left and end the body.
    pub fn finish(mut self) {
        let result = self.send_buffered();
        self.signal_started();
        if let Err(e) = result {
            tracing::warn!(error = %e, "diff stream not delivered");
        }
        // Dropping the sender ends the body.
    }

    /// The driver failed: answer with the error if nothing was sent yet, otherwise abort the
    /// body so the client sees a broken stream rather than a short but well-formed tar.
    pub fn fail(mut self, err: String) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Err(err));
            return;
        }
        if let Some(sender) = self.sender.take() {
            sender.abort(io::Error::other(err));
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}
