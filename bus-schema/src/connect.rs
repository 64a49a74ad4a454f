//! Connecting to NATS the same way in every service: credentials taken
//! out of the URL (async-nats does not send URL credentials itself), the
//! first connection retried, reconnection forever, and a URL safe to log.
//! Also the one way every service learns it should stop
//! ([`shutdown_signal`]).

use std::time::Duration;

/// Resolves on SIGTERM or Ctrl-C (SIGINT). A signal that cannot be
/// listened for never resolves, rather than stopping the service at once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// A NATS URL, or several separated by commas (the servers of a cluster),
/// split into what to dial and how to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// The URLs without credentials, joined by commas: safe to log.
    pub address: String,
    /// Each server's URL without credentials, in the order given.
    pub servers: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NatsUrl({}, user: {:?}, password: <hidden>)",
            self.address, self.user
        )
    }
}

/// Why a service could not connect to NATS. An unreachable server is not
/// one: it is retried until it answers.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL of the list does not parse.
    #[error("invalid NATS URL: {0}")]
    InvalidUrl(#[from] url::ParseError),
    /// Two URLs of the list carry different credentials.
    #[error("the NATS URLs name different credentials; give them once")]
    MixedCredentials,
    /// The client refused its options or gave up.
    #[error("NATS connect: {0}")]
    Client(#[from] async_nats::ConnectError),
}

impl NatsUrl {
    /// Parses one URL or a comma-separated list. Credentials may be written
    /// in any of the URLs; where several carry them, they must agree (one
    /// connection authenticates one way, whichever server it reaches).
    pub fn parse(raw: &str) -> Result<Self, ConnectError> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut servers = Vec::new();
        let mut credentials: Option<(Option<String>, Option<String>)> = None;
        for part in raw.split(',').map(str::trim) {
            let mut url = url::Url::parse(part)?;
            let user = (!url.username().is_empty()).then(|| decode(url.username()));
            let password = url.password().map(decode);
            if user.is_some() || password.is_some() {
                match &credentials {
                    Some(c) if *c != (user.clone(), password.clone()) => {
                        return Err(ConnectError::MixedCredentials)
                    }
                    _ => credentials = Some((user, password)),
                }
            }
            let _ = url.set_username("");
            let _ = url.set_password(None);
            servers.push(url.to_string().trim_end_matches('/').to_string());
        }
        let (user, password) = credentials.unwrap_or_default();
        Ok(Self {
            address: servers.join(","),
            servers,
            user,
            password,
        })
    }
}

/// Connects as `name` to the server or servers of `raw_url` (one URL or a
/// comma-separated list: the client picks one, and on losing it reconnects
/// to another, also to servers the cluster announces). Fails only for an
/// invalid URL; an unreachable server is retried until one answers.
pub async fn connect(raw_url: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    let url = NatsUrl::parse(raw_url)?;
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None);
    if let (Some(user), Some(pass)) = (&url.user, &url.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    } else if let Some(token) = &url.user {
        opts = opts.token(token.clone());
    }
    tracing::info!(url = %url.address, name, "connecting to NATS");
    Ok(opts.connect(url.servers.as_slice()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_and_out_of_the_log() {
        let u = NatsUrl::parse("nats://api:p%40ss@127.0.0.1:4222").unwrap();
        assert_eq!(u.address, "nats://127.0.0.1:4222");
        assert_eq!(u.user.as_deref(), Some("api"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert!(!format!("{u:?}").contains("p@ss"));
        let plain = NatsUrl::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((plain.user, plain.password), (None, None));
        assert!(NatsUrl::parse("not a url").is_err());
    }

    #[test]
    fn a_list_of_urls_gives_every_server_and_one_set_of_credentials() {
        let u = NatsUrl::parse(
            "nats://worker:s3cret@10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222",
        )
        .unwrap();
        assert_eq!(
            u.servers,
            [
                "nats://10.0.0.1:4222",
                "nats://10.0.0.2:4222",
                "nats://10.0.0.3:4222"
            ]
        );
        assert_eq!(u.address, u.servers.join(","));
        assert_eq!(u.user.as_deref(), Some("worker"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert!(!format!("{u:?}").contains("s3cret"));
        let same = NatsUrl::parse("nats://a:b@h1:4222,nats://a:b@h2:4222").unwrap();
        assert_eq!((same.user.as_deref(), same.servers.len()), (Some("a"), 2));
        assert!(NatsUrl::parse("nats://a:b@h1:4222,nats://a:c@h2:4222").is_err());
        assert!(NatsUrl::parse("nats://h1:4222,").is_err(), "an empty entry");
    }
}
