//! gRPC's own errors, worded as tonic (and, where noted, grpc-go) word them: the hand-written KV
//! path (`kv_unary.rs`) and the JSON gateway answer what a tonic service would.

use tonic::Status;

/// tonic's answer to a call of a KV method that does not exist.
pub fn unknown_kv_method(method: &str) -> Status {
    Status::unimplemented(format!("unknown method {method} in service etcdserverpb.KV"))
}

/// tonic's answer to a request compressed with an encoding the server does not take.
pub fn compression_unsupported(encoding: &str) -> Status {
    Status::unimplemented(format!("Content is compressed with `{encoding}` which isn't supported"))
}

/// tonic's answer to a request message longer than the server takes.
pub fn message_too_large(found: usize, limit: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {found} bytes, the limit is: {limit} bytes"
    ))
}

/// grpc-go's answer to a response message longer than the server sends.
pub fn response_too_large(len: usize, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "grpc: trying to send message larger than max ({len} vs. {limit})"
    ))
}

/// tonic's answer to a unary call whose body ended before any message.
pub fn missing_message() -> Status {
    Status::internal("Missing request message.")
}

/// tonic's answer to a unary call whose body ended inside its message.
pub fn unexpected_eof() -> Status {
    Status::internal("Unexpected EOF decoding stream.")
}

/// tonic's answer to a message whose compression flag is neither 0 nor 1.
pub fn invalid_compression_flag(flag: u8) -> Status {
    Status::internal(format!(
        "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1), while \
         sending request"
    ))
}

/// grpc-go's answer to a unary call that sends a second message.
pub fn more_than_one_message() -> Status {
    Status::internal("cardinality violation: received multiple request messages for non-client-streaming RPC")
}

/// tonic's answer to a request message that does not decode.
pub fn decode_failed(err: impl std::fmt::Display) -> Status {
    Status::internal(format!("failed to decode Protobuf message: {err}"))
}

/// The request's body could not be read.
pub fn read_failed(err: impl std::fmt::Display) -> Status {
    Status::internal(format!("failed to read the request: {err}"))
}

/// A response message could not be encoded.
pub fn encode_failed(err: impl std::fmt::Display) -> Status {
    Status::internal(format!("failed to encode the answer: {err}"))
}

/// The JSON gateway could not write a response as JSON.
pub fn json_encode_failed(err: impl std::fmt::Display) -> Status {
    Status::internal(format!("cannot encode the response: {err}"))
}
