//! The JSON values of a client stream's body, read as they arrive: a client may keep its
//! request body open and send more requests later (a watch cancelled after a while), as
//! etcd's gateway allows.

use axum::body::{Body, BodyDataStream};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tonic::Status;

/// Reads JSON values one after another from a request body.
pub struct JsonValues {
    body: BodyDataStream,
    buffered: Vec<u8>,
    ended: bool,
    /// The most bytes of one value held before it is refused.
    max_bytes: usize,
}

impl JsonValues {
    /// Values of `body`; a value longer than `max_bytes` fails the stream.
    pub fn new(body: Body, max_bytes: usize) -> JsonValues {
        JsonValues {
            body: body.into_data_stream(),
            buffered: Vec::new(),
            ended: false,
            max_bytes,
        }
    }

    /// The next value; `None` once the body ends (or fails) between values. Malformed JSON, or
    /// a body that ends inside a value, is `Unknown`, as etcd's gateway answers it.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, Status>> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buffered).into_iter::<T>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buffered.drain(..used);
                    return Some(Ok(value));
                }
                Some(Err(e)) if !e.is_eof() => {
                    self.ended = true;
                    self.buffered.clear();
                    return Some(Err(Status::unknown(e.to_string())));
                }
                Some(Err(e)) if self.ended => {
                    self.buffered.clear();
                    return Some(Err(Status::unknown(e.to_string())));
                }
                None if self.ended => return None,
                // Only whitespace, or a value not complete yet: read on.
                _ => {}
            }
            if self.buffered.len() > self.max_bytes {
                self.ended = true;
                let found = self.buffered.len();
                self.buffered.clear();
                return Some(Err(crate::errors::message_too_large(found, self.max_bytes)));
            }
            match self.body.next().await {
                Some(Ok(data)) => self.buffered.extend_from_slice(&data),
                Some(Err(_)) | None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::etcdserverpb::WatchRequest;

    async fn all(body: &'static str) -> Vec<Result<WatchRequest, tonic::Code>> {
        let mut values = JsonValues::new(Body::from(body), 1 << 20);
        let mut out = Vec::new();
        while let Some(v) = values.next::<WatchRequest>().await {
            let failed = v.is_err();
            out.push(v.map_err(|s| s.code()));
            if failed {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn values_follow_one_another() {
        let got = all(r#" {"create_request":{"key":"YQ=="}}{"cancel_request":{"watch_id":"1"}} "#).await;
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(Result::is_ok));
        assert!(all("").await.is_empty());
        assert_eq!(all("xx").await, vec![Err(tonic::Code::Unknown)]);
        let got = all(r#"{} {"create_"#).await;
        assert_eq!((got.len(), got[1].clone().err()), (2, Some(tonic::Code::Unknown)));
    }

    #[tokio::test]
    async fn values_arrive_in_pieces() {
        let pieces = futures::stream::iter([r#"{"create_req"#, r#"uest":{"key":"YQ=="}}"#, r#" {}"#])
            .map(|p| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(p.as_bytes())));
        let mut values = JsonValues::new(Body::from_stream(pieces), 1 << 20);
        let first: WatchRequest = values.next().await.unwrap().unwrap();
        assert!(first.request_union.is_some());
        assert!(values.next::<WatchRequest>().await.unwrap().is_ok());
        assert!(values.next::<WatchRequest>().await.is_none());
    }
}
