//! An upstream response body as the pipeline hands it on: the bytes already read (to
//! classify the response, say) followed by the rest of the stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
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
    /// what is left: `None` when the body ended within them. The first piece is kept as
    /// it came, not copied: a short answer is one piece, and once its declared length
    /// has come the body is not asked for an end it already reached.
    pub async fn read_prefix(mut self, limit: usize, idle: Duration) -> (Bytes, Option<Self>) {
        use http_body::Body as _;
        let mut read = Prefix::default();
        while read.len() <= limit {
            if self.is_end_stream() {
                return (read.bytes(), None);
            }
            // A piece already here (a short answer comes with its head) needs no timer.
            let next = match self.frame().now_or_never() {
                Some(next) => Ok(next),
                None => tokio::time::timeout(idle, self.frame()).await,
            };
            match next {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        read.push(data);
                    }
                }
                Ok(Some(Err(_))) | Err(_) => return (read.bytes(), Some(self)),
                Ok(None) => return (read.bytes(), None),
            }
        }
        (read.bytes(), Some(self))
    }
}

/// The pieces [`UpstreamBody::read_prefix`] read: the first as it came, and once a
/// second one arrives, all of them copied together.
#[derive(Default)]
enum Prefix {
    #[default]
    Empty,
    One(Bytes),
    Many(bytes::BytesMut),
}

impl Prefix {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(data),
            Self::One(first) => {
                let mut all = bytes::BytesMut::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.extend_from_slice(&data);
                Self::Many(all)
            }
        };
    }

    fn bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_of_one_piece_is_that_piece_and_of_more_all_of_them_in_order() {
        assert!(Prefix::default().bytes().is_empty());
        let one = Bytes::from_static(b"{\"ok\":true}");
        let mut read = Prefix::default();
        read.push(one.clone());
        assert_eq!(read.len(), one.len());
        let kept = read.bytes();
        assert_eq!(kept, one);
        assert_eq!(kept.as_ptr(), one.as_ptr(), "not copied");
        let mut read = Prefix::default();
        for piece in ["{\"ok\"", ":tr", "ue}"] {
            read.push(Bytes::from_static(piece.as_bytes()));
        }
        assert_eq!(read.len(), 11);
        assert_eq!(read.bytes(), Bytes::from_static(b"{\"ok\":true}"));
    }

    /// A body already at hand is read without waiting, up to the limit and no further.
    #[tokio::test]
    async fn a_body_at_hand_is_read_up_to_the_limit() {
        let idle = Duration::from_secs(30);
        let body = UpstreamBody::new(Bytes::from_static(b"{\"ok\":true}"), None);
        let (read, rest) = body.read_prefix(64, idle).await;
        assert_eq!(read, Bytes::from_static(b"{\"ok\":true}"));
        assert!(rest.is_none(), "the body ended within the limit");
        let body = UpstreamBody::new(Bytes::from_static(b"0123456789"), None);
        let (read, rest) = body.read_prefix(4, idle).await;
        assert_eq!(read, Bytes::from_static(b"0123456789"));
        let rest = rest.expect("read past the limit: the rest is handed on");
        assert!(rest.collect().await.expect("rest").to_bytes().is_empty());
    }
}
