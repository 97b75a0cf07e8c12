//! etcdctl's client TLS flags (`--cacert`, `--cert`, `--key`), shared by every command that
//! talks to a cluster, and the endpoints they produce.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How the CLI reaches a cluster whose client URLs are `https://`. (The argument ids differ from
/// the flag names because `kv` has a positional argument called `key`.)
#[derive(Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// Verify servers with this CA bundle; turns TLS on (host:port endpoints become https://).
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Identify this client with this certificate (for members started with --client-cert-auth).
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "ETCDCTL_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "ETCDCTL_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The URL for an endpoint given as `host:port` or as a URL: `https://` when TLS is on.
    pub fn url(&self, endpoint: &str) -> String {
        let endpoint = endpoint.trim();
        if endpoint.contains("://") {
            endpoint.to_string()
        } else if self.cacert.is_some() {
            format!("https://{endpoint}")
        } else {
            format!("http://{endpoint}")
        }
    }

    /// A tonic endpoint for `endpoint`, with TLS when its URL is `https://`.
    pub fn endpoint(&self, endpoint: &str) -> Result<Endpoint, String> {
        let url = self.url(endpoint);
        let target = Endpoint::from_shared(url.clone()).map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
        if !url.starts_with("https://") {
            return Ok(target);
        }
        let ca = self
            .cacert
            .as_deref()
            .ok_or_else(|| format!("{endpoint}: an https endpoint needs --cacert to verify the server"))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        target.tls_config(tls).map_err(|e| format!("{endpoint}: {e}"))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::ClientTlsArgs;

    #[test]
    fn host_port_endpoints_follow_the_tls_flags_and_urls_are_kept() {
        let plain = ClientTlsArgs::default();
        assert_eq!(plain.url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(plain.url(" https://a:1 "), "https://a:1");
        let tls = ClientTlsArgs {
            cacert: Some("ca.pem".into()),
            ..ClientTlsArgs::default()
        };
        assert_eq!(tls.url("127.0.0.1:2379"), "https://127.0.0.1:2379");
        assert_eq!(tls.url("http://a:1"), "http://a:1");
        assert!(plain.endpoint("https://a:1").unwrap_err().contains("--cacert"));
    }
}
