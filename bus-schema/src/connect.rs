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

/// A NATS URL split into what to dial and how to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// The URL without credentials: safe to log.
    pub address: String,
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

impl NatsUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(raw).map_err(|e| format!("invalid NATS URL: {e}"))?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Self {
            address: url.to_string().trim_end_matches('/').to_string(),
            user,
            password,
        })
    }
}

/// Connects as `name`. Fails only for an invalid URL; an unreachable
/// server is retried until it answers.
pub async fn connect(raw_url: &str, name: &str) -> Result<async_nats::Client, String> {
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
    opts.connect(url.address.as_str())
        .await
        .map_err(|e| e.to_string())
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
}
