//! How every CLI command reaches a cluster: etcdctl's connection flags
//! (`--endpoints`, `--dial-timeout`, `--command-timeout`, the TLS flags,
//! `--user`/`--password`) and a [`Session`] that carries them.
//!
//! It exists so that `kv`, `lease`, `member`, `endpoint` and `snapshot`
//! connect, authenticate, time out and report errors the same way:
//! connection failures name the endpoint, and gRPC errors show etcd's own
//! message (`etcdserver: requested lease not found`), as etcdctl does.

use std::future::Future;
use std::time::Duration;

use clap::Args;
use concord_proto::etcdserverpb::auth_client::AuthClient;
use concord_proto::etcdserverpb::AuthenticateRequest;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::client_tls::ClientTlsArgs;
use crate::serve::parse_duration;

/// The gRPC metadata key that carries an auth token (etcd's name for it).
const TOKEN_KEY: &str = "token";

/// Flags of every command that talks to a cluster; names and defaults follow etcdctl's.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Endpoints to try, in order, until one answers (comma-separated; host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// How long to wait for a connection to one endpoint (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration, global = true)]
    pub dial_timeout: Duration,
    /// How long to wait for the cluster to answer one request (not streams: watch, keep-alive, snapshot).
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub command_timeout: Duration,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Authenticate as this user: name or name:password (like etcdctl's --user).
    #[arg(long, global = true, env = "ETCDCTL_USER", hide_env_values = true)]
    pub user: Option<String>,
    /// The password of --user (then --user is taken as the whole name).
    #[arg(long, global = true, env = "ETCDCTL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl ClusterArgs {
    /// The user name and password to authenticate with, if any: `--user name:password`, or
    /// `--user name --password secret`.
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let Some(user) = self.user.as_deref() else {
            return Ok(None);
        };
        if user.is_empty() || user.starts_with(':') {
            return Err("--user: the user name is empty".into());
        }
        let (name, password) = match (&self.password, user.split_once(':')) {
            (Some(password), _) => (user.to_string(), password.clone()),
            (None, Some((name, password))) => (name.to_string(), password.to_string()),
            (None, None) => {
                return Err(format!(
                    "--user {user:?} has no password: give --user {user}:PASSWORD or --password"
                ))
            }
        };
        Ok(Some((name, password)))
    }
}

/// A connection to one member, authenticated when `--user` was given; what every command
/// sends its requests through.
#[derive(Clone)]
pub struct Session {
    /// The gRPC channel to the member.
    pub channel: Channel,
    /// The endpoint it reached, as given (for messages).
    pub endpoint: String,
    token: Option<MetadataValue<Ascii>>,
    command_timeout: Duration,
}

impl Session {
    /// Connects to the first of `--endpoints` that answers, and authenticates.
    pub async fn connect(args: &ClusterArgs) -> Result<Session, String> {
        let (channel, endpoint) = connect_first(&args.endpoints, &args.tls, args.dial_timeout).await?;
        Session::authenticate(args, channel, endpoint).await
    }

    /// Connects to `endpoint` only (for commands that ask each endpoint in turn), and authenticates.
    pub async fn connect_to(args: &ClusterArgs, endpoint: &str) -> Result<Session, String> {
        let channel = dial(&args.tls, endpoint, args.dial_timeout).await?;
        Session::authenticate(args, channel, endpoint.to_string()).await
    }

    async fn authenticate(args: &ClusterArgs, channel: Channel, endpoint: String) -> Result<Session, String> {
        let mut session = Session {
            channel,
            endpoint,
            token: None,
            command_timeout: args.command_timeout,
        };
        if let Some((name, password)) = args.credentials()? {
            let mut auth = AuthClient::new(session.channel.clone());
            let resp = session
                .call(auth.authenticate(AuthenticateRequest { name, password }))
                .await?;
            let token = resp
                .token
                .parse()
                .map_err(|_| "the server's auth token is not valid metadata".to_string())?;
            session.token = Some(token);
        }
        Ok(session)
    }

    /// A request carrying this session's auth token, if it has one.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN_KEY, token.clone());
        }
        request
    }

    /// Awaits one unary call within `--command-timeout`; errors read as etcdctl's.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.command_timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.describe(status)),
            Err(_) => Err(format!(
                "context deadline exceeded: {} did not answer within {:?} (--command-timeout)",
                self.endpoint, self.command_timeout
            )),
        }
    }

    /// The next message of a response stream, which must come within `--command-timeout`
    /// (for streams that answer each request, such as lease keep-alives).
    pub async fn next<T>(&self, stream: &mut tonic::Streaming<T>) -> Result<Option<T>, String> {
        match tokio::time::timeout(self.command_timeout, stream.message()).await {
            Ok(message) => message.map_err(|s| self.describe(s)),
            Err(_) => Err(format!(
                "context deadline exceeded: {} did not answer within {:?} (--command-timeout)",
                self.endpoint, self.command_timeout
            )),
        }
    }

    /// A gRPC error as etcdctl shows it: etcd's message; for a failed connection, with the endpoint.
    pub fn describe(&self, status: tonic::Status) -> String {
        let unreachable = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
            && !status.message().starts_with("etcdserver:");
        if unreachable {
            format!("{}: {}", self.endpoint, status_message(status))
        } else {
            status_message(status)
        }
    }
}

/// Connects to `endpoint` within `dial_timeout`; the error names the endpoint.
pub async fn dial(tls: &ClientTlsArgs, endpoint: &str, dial_timeout: Duration) -> Result<Channel, String> {
    let target = tls
        .endpoint(endpoint)
        .map_err(|e| format!("{endpoint}: {e}"))?
        .connect_timeout(dial_timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(dial_timeout, open(&target, dial_timeout)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("{endpoint}: {}", error_chain(&e))),
        Err(_) => Err(format!("{endpoint}: no connection within {dial_timeout:?}")),
    }
}

/// Opens a channel to `target`. Plain connections get Concord's own connector, which batches
/// h2's writes ([`concord_tls::CoalescedWrites`]); https ones keep tonic's TLS, configured from
/// etcdctl's flags.
pub async fn open(target: &Endpoint, connect_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    if target.uri().scheme_str() == Some("https") {
        target.connect().await
    } else {
        target
            .connect_with_connector(concord_tls::TcpConnector::new(None, connect_timeout))
            .await
    }
}

/// Connects to the first endpoint that accepts a connection within `dial_timeout`.
/// Returns the channel and the endpoint it reached.
pub async fn connect_first(
    endpoints: &[String],
    tls: &ClientTlsArgs,
    dial_timeout: Duration,
) -> Result<(Channel, String), String> {
    let mut errors = Vec::new();
    for endpoint in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        match dial(tls, endpoint, dial_timeout).await {
            Ok(channel) => return Ok((channel, endpoint.to_string())),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Err("--endpoints: give at least one endpoint".into());
    }
    Err(format!("cannot reach any endpoint ({})", errors.join("; ")))
}

/// An error and its causes on one line (tonic's transport errors say little on
/// their own); a cause that the next one repeats is left out.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut texts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    let kept: Vec<&str> = texts
        .iter()
        .enumerate()
        .filter(|(i, t)| texts.get(i + 1).is_none_or(|next| !next.contains(t.as_str())))
        .map(|(_, t)| t.as_str())
        .collect();
    kept.join(": ")
}

/// A gRPC error as etcdctl shows it: the server's message (etcd's error strings).
pub fn status_message(status: tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, password: Option<&str>) -> ClusterArgs {
        ClusterArgs {
            endpoints: vec![],
            dial_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            tls: ClientTlsArgs::default(),
            user: user.map(str::to_string),
            password: password.map(str::to_string),
        }
    }

    #[test]
    fn credentials_follow_etcdctl() {
        assert_eq!(args(None, None).credentials().unwrap(), None);
        assert_eq!(
            args(Some("root:pw:x"), None).credentials().unwrap(),
            Some(("root".into(), "pw:x".into()))
        );
        assert_eq!(
            args(Some("a:b"), Some("pw")).credentials().unwrap(),
            Some(("a:b".into(), "pw".into()))
        );
        assert!(args(Some("root"), None)
            .credentials()
            .unwrap_err()
            .contains("no password"));
        assert!(args(Some(":pw"), None).credentials().unwrap_err().contains("empty"));
        assert!(args(Some(""), Some("pw")).credentials().unwrap_err().contains("empty"));
    }

    #[tokio::test]
    async fn no_endpoints_is_a_clear_error() {
        let e = connect_first(&[" ".into()], &ClientTlsArgs::default(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(e.contains("--endpoints"), "{e}");
    }
}
