//! The protobuf codec every generated client and server uses: prost's, with smaller buffers.
//!
//! tonic gives each call a fresh encode buffer and a fresh decode buffer of 8 KiB. etcd's calls
//! are mostly a few hundred bytes, and a member answers tens of thousands of them a second, so
//! two 8 KiB allocations per call are a measurable share of its CPU. The buffers grow when a
//! message needs more, so a large range response or a long stream costs the same as before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Room for a typical etcd request or response; larger messages grow the buffer.
const BUFFER_BYTES: usize = 1024;

/// How much encoded output a streaming call collects before it yields (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost encoding with [`BUFFER_BYTES`] buffers; named in `build.rs` as the codec of every
/// service.
#[derive(Debug, Clone)]
pub struct CompactCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for CompactCodec<T, U> {
    fn default() -> Self {
        CompactCodec { _types: PhantomData }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for CompactCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
