//! A member's TLS: the configurations its listeners and outgoing links use, kept current as
//! certificate files rotate, and the user a client certificate names.

use std::net::IpAddr;
use std::sync::Arc;

use concord_tls::rustls;
use concord_tls::{client_config, server_config, AllowedNames, Dialer, Reload, Reloadable, TlsFiles};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::config::ServerConfig;
use crate::member::ServeError;

/// Everything TLS a member runs with, built once at startup from its flags.
pub struct MemberTls {
    /// What `https://` client listeners present; `None` without `--cert-file`.
    pub client_listener: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// What `https://` peer listeners present; `None` without `--peer-cert-file`.
    pub peer_listener: Option<Arc<Reloadable<rustls::ServerConfig>>>,
    /// How the member calls other members' client URLs (forwarding to the leader), presenting
    /// `--client-cert-file` if given, else `--cert-file`.
    pub client_dialer: Dialer,
    /// How the member connects to other members' peer URLs (Raft traffic, joining), presenting
    /// `--peer-client-cert-file` if given, else `--peer-cert-file`.
    pub peer_dialer: Dialer,
    reloadable: Vec<Arc<dyn Reload>>,
}

impl MemberTls {
    /// Loads every configured certificate, and checks that each `https://` URL the member
    /// listens on has one.
    pub fn load(cfg: &ServerConfig, peer_source: Option<IpAddr>) -> Result<MemberTls, ServeError> {
        let mut reloadable: Vec<Arc<dyn Reload>> = Vec::new();
        // `check_servers`: whether the side's allowed names (etcd's --*-cert-allowed-* flags)
        // also bind the servers the member connects to. etcd's peer links check both ways; the
        // client side's flag is about clients' certificates, and the member's own calls to other
        // members' client URLs (forwarding to the leader) are no etcd client's.
        let mut side = |what: &str, files: &Option<TlsFiles>, check_servers: bool| -> Result<_, ServeError> {
            let Some(files) = files else { return Ok((None, None)) };
            let error = |e: concord_tls::TlsError| ServeError::Config(format!("{what}: {e}"));
            let listener =
                Reloadable::new(format!("{what} (listener)"), files.clone(), server_config).map_err(error)?;
            let mut outgoing = files.clone();
            if !check_servers {
                outgoing.allowed = AllowedNames::Any;
            }
            let dialer = Reloadable::new(format!("{what} (outgoing)"), outgoing, client_config).map_err(error)?;
            reloadable.push(listener.clone());
            reloadable.push(dialer.clone());
            Ok((Some(listener), Some(dialer)))
        };
        let (client_listener, client_out) = side("client TLS", &cfg.client_tls, false)?;
        let (peer_listener, peer_out) = side("peer TLS", &cfg.peer_tls, true)?;
        require_certificates(
            &cfg.listen_client_urls,
            client_listener.is_some(),
            "--listen-client-urls",
            "--cert-file, --key-file",
        )?;
        require_certificates(
            &cfg.listen_client_http_urls,
            client_listener.is_some(),
            "--listen-client-http-urls",
            "--cert-file, --key-file",
        )?;
        require_certificates(
            &cfg.listen_peer_urls,
            peer_listener.is_some(),
            "--listen-peer-urls",
            "--peer-cert-file, --peer-key-file",
        )?;
        Ok(MemberTls {
            client_listener,
            peer_listener,
            client_dialer: Dialer::new(client_out, None),
            peer_dialer: Dialer::new(peer_out, peer_source),
            reloadable,
        })
    }

    /// Starts following the certificate files (and SIGHUP), if any are configured.
    pub fn spawn_reloader(&self) {
        if !self.reloadable.is_empty() {
            concord_tls::spawn_reloader(self.reloadable.clone());
        }
    }
}

fn require_certificates(urls: &[String], have: bool, flag: &str, needs: &str) -> Result<(), ServeError> {
    match urls.iter().find(|u| u.starts_with("https://")) {
        Some(url) if !have => Err(ServeError::Config(format!(
            "{flag} has {url}: TLS key/cert ({needs}) must be provided for https URLs"
        ))),
        _ => Ok(()),
    }
}

/// The user a request's client certificate names (its subject's common name), when the request
/// came over TLS with a verified client certificate (`--client-cert-auth`). etcd takes this as
/// the user when a request carries no token.
pub fn certificate_user(extensions: &tonic::Extensions) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    concord_tls::common_name(certs.first()?)
}
