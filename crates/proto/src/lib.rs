//! Wire types and gRPC stubs for Concord.
//!
//! Concord speaks etcd's v3 gRPC API so that unmodified etcd clients (etcdctl,
//! the `etcd-client` crate, ...) work against it. That only holds if every
//! package, service, method, message, field number and enum value matches
//! etcd's exactly, so all of it is generated here, in one place, from
//! Concord's own `.proto` files under `proto/etcd/`. The crate also carries
//! Concord's internal messages (`proto/concord/`): what a Raft log entry holds
//! and how members ship Raft traffic to one another.
//!
//! Each module is a sibling at the crate root, named after its protobuf
//! package, so the `super::<package>::...` paths that prost generates for
//! cross-package references resolve.

pub mod codec;

/// etcd's `mvccpb` package: stored key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's `authpb` package: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's `etcdserverpb` package: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's `v3lockpb` package: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's `v3electionpb` package: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// etcd 3.5's `membershippb` package: membership changes in etcd's Raft log (read when migrating
/// an etcd member's WAL).
pub mod membershippb {
    tonic::include_proto!("membershippb");
    include!(concat!(env!("OUT_DIR"), "/membershippb.serde.rs"));
}

/// etcd's `raftpb` package, the part its WAL stores (entries, hard state): read when `concord
/// serve` migrates an etcd member's data directory.
pub mod raftpb {
    tonic::include_proto!("raftpb");
}

/// etcd's `walpb` package: the records of etcd's write-ahead log, read when migrating an etcd
/// member's data directory.
pub mod walpb {
    tonic::include_proto!("walpb");
}

/// Concord's internal `concordpb` package: replicated commands and the Raft peer service.
pub mod concordpb {
    tonic::include_proto!("concordpb");
}

/// `Debug` for the messages that hold secrets (listed in `build.rs`): every
/// field is shown except passwords, password hashes and tokens, which print
/// as `<redacted>` (or `""` when empty, so a log still tells whether one was
/// sent).
mod redacted {
    use std::fmt;

    use super::authpb::User;
    use super::etcdserverpb::{
        AuthUserAddRequest, AuthUserChangePasswordRequest, AuthenticateRequest, AuthenticateResponse,
        InternalAuthenticateRequest,
    };

    /// Prints a secret's presence, never its content.
    struct Secret(bool);

    impl fmt::Debug for Secret {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0 { "<redacted>" } else { "\"\"" })
        }
    }

    fn secret(value: &[u8]) -> Secret {
        Secret(!value.is_empty())
    }

    impl fmt::Debug for AuthenticateRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuthenticateRequest")
                .field("name", &self.name)
                .field("password", &secret(self.password.as_bytes()))
                .finish()
        }
    }

    impl fmt::Debug for AuthenticateResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuthenticateResponse")
                .field("header", &self.header)
                .field("token", &secret(self.token.as_bytes()))
                .finish()
        }
    }

    impl fmt::Debug for AuthUserAddRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuthUserAddRequest")
                .field("name", &self.name)
                .field("password", &secret(self.password.as_bytes()))
                .field("options", &self.options)
                .field("hashed_password", &secret(self.hashed_password.as_bytes()))
                .finish()
        }
    }

    impl fmt::Debug for AuthUserChangePasswordRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuthUserChangePasswordRequest")
                .field("name", &self.name)
                .field("password", &secret(self.password.as_bytes()))
                .field("hashed_password", &secret(self.hashed_password.as_bytes()))
                .finish()
        }
    }

    impl fmt::Debug for InternalAuthenticateRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("InternalAuthenticateRequest")
                .field("name", &self.name)
                .field("password", &secret(self.password.as_bytes()))
                .field("simple_token", &secret(self.simple_token.as_bytes()))
                .finish()
        }
    }

    impl fmt::Debug for User {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("User")
                .field("name", &String::from_utf8_lossy(&self.name))
                .field("password", &secret(&self.password))
                .field("roles", &self.roles)
                .field("options", &self.options)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn secrets_never_print() {
            let req = AuthUserAddRequest {
                name: "alice".into(),
                password: "hunter2".into(),
                hashed_password: "JDJhJDEw".into(),
                options: None,
            };
            let printed = format!("{req:?}");
            assert!(printed.contains("alice"), "{printed}");
            assert!(
                !printed.contains("hunter2") && !printed.contains("JDJhJDEw"),
                "{printed}"
            );
            let auth = AuthenticateRequest {
                name: "bob".into(),
                password: "pw".into(),
            };
            assert!(!format!("{auth:?}").contains("\"pw\""));
            let resp = AuthenticateResponse {
                header: None,
                token: "tok.123".into(),
            };
            assert!(!format!("{resp:#?}").contains("tok.123"));
            let change = AuthUserChangePasswordRequest {
                name: "c".into(),
                password: "s3cret".into(),
                hashed_password: String::new(),
            };
            assert!(!format!("{change:?}").contains("s3cret"));
            let user = User {
                name: b"u".to_vec(),
                password: b"$2b$10$hash".to_vec(),
                roles: vec![],
                options: None,
            };
            assert!(!format!("{user:?}").contains("hash"));
            let internal = InternalAuthenticateRequest {
                name: "d".into(),
                password: "pa55".into(),
                simple_token: "simple.7".into(),
            };
            let printed = format!("{internal:?}");
            assert!(!printed.contains("pa55") && !printed.contains("simple.7"), "{printed}");
        }
    }
}
