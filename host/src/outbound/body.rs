//! An upstream response body as the pipeline hands it on: the bytes already read (to
//! classify the response, say) followed by the rest of the stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt as _;

use crate::egress::InBody;

/// A response body: `prefix`, then whatever of the stream was not read yet.
#[derive(Debug, Default)]
pub struct UpstreamBody {
    prefix: Option<Bytes>,
    rest: Option<InBody>,
}

impl UpstreamBody {
    pub fn new(prefix: Bytes, rest: Option<InBody>) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }

    pub fn stream(body: InBody) -> Self {
        Self::new(Bytes::new(), Some(body))
    }

    /// The rest of a body that [`UpstreamBody::read_prefix`] left, with `prefix` (what it
    /// read) in front again.
    pub fn after(mut self, prefix: Bytes) -> Self {
        if !prefix.is_empty() {
            self.prefix = Some(match self.prefix.take() {
                Some(more) => [prefix, more].concat().into(),
                None => prefix,
            });
        }
        self
    }

    /// Reads up to `limit` bytes (waiting at most `idle` for each piece). Returns them and
    /// what is left: `None` when the body ended within them.
    pub async fn read_prefix(mut self, limit: usize, idle: Duration) -> (Bytes, Option<Self>) {
        let mut buf = bytes::BytesMut::new();
        while buf.len() <= limit {
            match tokio::time::timeout(idle, self.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        buf.extend_from_slice(&data);
                    }
                }
                Ok(Some(Err(_))) | Err(_) => return (buf.freeze(), Some(self)),
                Ok(None) => return (buf.freeze(), None),
            }
        }
        (buf.freeze(), Some(self))
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut h = self
            .rest
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |r| r.size_hint());
        // Upper first: a lower bound may never exceed the upper one.
        if let Some(u) = h.upper() {
            h.set_upper(u + extra);
        }
        h.set_lower(h.lower() + extra);
        h
    }
}
