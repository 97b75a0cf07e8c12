//! TLS for Concord's two kinds of links, with etcd's flags and meaning.
//!
//! A member has a *client* side (`--cert-file`, `--key-file`, `--trusted-ca-file`,
//! `--client-cert-auth`) and a *peer* side (the same flags prefixed with `peer-`). Each side is
//! described by one [`TlsFiles`]. From it this crate builds:
//!
//! * a rustls server configuration for the member's listeners ([`server_config`]), which asks
//!   for and verifies client certificates when `client_cert_auth` is set;
//! * a rustls client configuration for the member's own outgoing connections
//!   ([`client_config`]): to other members' peer ports (presenting the peer certificate), and to
//!   other members' client ports when a request is forwarded to the leader.
//!
//! Both are held in a [`Reloadable`], which rebuilds them when the files change on disk or on
//! SIGHUP ([`spawn_reloader`]), so certificates rotate without a restart. Connections already
//! open keep the certificates they were made with; every new handshake uses the current ones.
//!
//! [`accept`] turns a TCP listener into a stream of TLS connections for a tonic server, and
//! [`TlsConnector`] makes TLS connections for a tonic channel ([`TcpConnector`] plain ones).
//! Each connection is wrapped in [`CoalescedWrites`], so that h2 writes the frames of many
//! requests or responses with one system call. [`common_name`] reads the user
//! name out of a client certificate, for `--client-cert-auth` (etcd's rule: the certificate's
//! common name is the user). [`AllowedNames`] narrows the certificates either side accepts to
//! those of given common names or hostnames (etcd's `--peer-cert-allowed-cn` and the
//! `--*-cert-allowed-hostname` flags).
//!
//! Only the `ring` crypto provider is compiled in, and every configuration names it explicitly,
//! so nothing depends on a process-wide default provider.

mod accept;
mod allowed;
mod coalesce;
mod config;
mod connect;
mod dial;
mod error;
mod policy;
mod reload;
mod subject;
mod unverified;

pub use accept::accept;
pub use allowed::AllowedNames;
pub use coalesce::CoalescedWrites;
pub use config::{client_config, server_config, TlsFiles};
pub use connect::{TcpConnector, TlsConnector};
pub use dial::Dialer;
pub use error::TlsError;
pub use policy::{TlsPolicy, TlsVersion};
pub use reload::{spawn_reloader, Reload, Reloadable};
/// The TLS library the configurations are made with, for callers that hold them.
pub use rustls;
pub use subject::common_name;

/// What a tonic server hands its services about a TLS connection's peer, under this crate's
/// acceptor: the client certificates, when the client sent any.
pub type PeerCertificates = std::sync::Arc<Vec<rustls_pki_types::CertificateDer<'static>>>;
