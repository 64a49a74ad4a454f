//! The host's HTTP(S) endpoints: request paths, the XML answers, and a
//! minimal HTTP/1.1 exchange (one GET per connection, `Connection: close`).
//!
//! Plain HTTP (port 47989 by default) serves `serverinfo` and the pairing
//! steps; HTTPS (47984) with the client certificate serves `serverinfo`,
//! `pair?phrase=pairchallenge`, `applist`, `launch`, `resume` and `cancel`.
//! Every answer is `<root status_code="…" status_message="…">…</root>`.

use std::collections::BTreeMap;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed HTTP message: {0}")]
    Malformed(&'static str),
    #[error("malformed XML answer: {0}")]
    Xml(String),
    #[error("host answered status {code}: {message}")]
    Status { code: u32, message: String },
    #[error("answer lacks <{0}>")]
    Missing(&'static str),
}

/// A GET request: path and query parameters (values already hex or plain
/// ASCII, which need no escaping in these URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl Get {
    pub fn new(path: &str) -> Self {
        Self {
            path: path.into(),
            query: Vec::new(),
        }
    }
    pub fn arg(mut self, name: &str, value: impl ToString) -> Self {
        self.query.push((name.into(), value.to_string()));
        self
    }
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn target(&self) -> String {
        let mut t = self.path.clone();
        for (i, (n, v)) in self.query.iter().enumerate() {
            t.push(if i == 0 { '?' } else { '&' });
            t.push_str(n);
            t.push('=');
            t.push_str(&percent_encode(v));
        }
        t
    }

    pub fn encode(&self, host: &str) -> Vec<u8> {
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            self.target()
        )
        .into_bytes()
    }

    /// Parses a request head; `Ok(None)` until the blank line arrived.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, HttpError> {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head =
            std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
        let line = head.lines().next().unwrap_or("");
        let mut parts = line.split(' ');
        let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
            return Err(HttpError::Malformed("request line"));
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), percent_decode(v))
            })
            .collect();
        Ok(Some(Self {
            path: path.into(),
            query,
        }))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP response carrying an XML body.
pub fn response(xml: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
        xml.len()
    )
    .into_bytes()
}

/// The body of a complete HTTP response (read until the host closed).
pub fn response_body(buf: &[u8]) -> Result<&[u8], HttpError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed("no header end"))?;
    if !buf.starts_with(b"HTTP/1.") {
        return Err(HttpError::Malformed("status line"));
    }
    Ok(&buf[end + 4..])
}

/// The `<root>` of an answer: its status and its child elements' text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XmlAnswer {
    pub status_code: u32,
    pub status_message: String,
    pub fields: BTreeMap<String, String>,
    /// `<App>` children (applist), each as its fields.
    pub apps: Vec<BTreeMap<String, String>>,
}

impl XmlAnswer {
    pub fn parse(body: &[u8]) -> Result<Self, HttpError> {
        let text = std::str::from_utf8(body).map_err(|_| HttpError::Xml("not UTF-8".into()))?;
        let doc = roxmltree::Document::parse(text).map_err(|e| HttpError::Xml(e.to_string()))?;
        let root = doc.root_element();
        let status_code = root
            .attribute("status_code")
            .and_then(|s| s.parse().ok())
            .ok_or(HttpError::Missing("status_code"))?;
        let mut out = Self {
            status_code,
            status_message: root.attribute("status_message").unwrap_or("").to_string(),
            ..Self::default()
        };
        for child in root.children().filter(|n| n.is_element()) {
            if child.tag_name().name() == "App" {
                out.apps.push(
                    child
                        .children()
                        .filter(|n| n.is_element())
                        .map(|n| {
                            (
                                n.tag_name().name().to_string(),
                                n.text().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                );
            } else {
                out.fields.insert(
                    child.tag_name().name().to_string(),
                    child.text().unwrap_or("").trim().to_string(),
                );
            }
        }
        Ok(out)
    }

    /// The answer, or its status as an error when it is not 200.
    pub fn ok(self) -> Result<Self, HttpError> {
        if self.status_code == 200 {
            Ok(self)
        } else {
            Err(HttpError::Status {
                code: self.status_code,
                message: self.status_message,
            })
        }
    }

    pub fn field(&self, name: &'static str) -> Result<&str, HttpError> {
        self.fields
            .get(name)
            .map(String::as_str)
            .ok_or(HttpError::Missing(name))
    }
}

/// Builds an answer document.
pub fn xml(status_code: u32, status_message: &str, fields: &[(&str, String)]) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<root status_code=\"{status_code}\" status_message=\"{}\">",
        escape(status_message)
    );
    for (n, v) in fields {
        s.push_str(&format!("<{n}>{}</{n}>", escape(v)));
    }
    s.push_str("</root>");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `serverinfo`, as clients use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub hostname: String,
    pub app_version: String,
    pub unique_id: String,
    pub https_port: u16,
    pub paired: bool,
    pub current_game: u32,
    /// `SUNSHINE_SERVER_FREE` or `SUNSHINE_SERVER_BUSY`.
    pub state: String,
    pub codec_support: u32,
}

impl ServerInfo {
    pub fn from_answer(a: &XmlAnswer) -> Result<Self, HttpError> {
        let num = |n: &'static str| -> Result<u32, HttpError> {
            a.field(n)?
                .parse()
                .map_err(|_| HttpError::Xml(format!("{n} is not a number")))
        };
        Ok(Self {
            hostname: a.field("hostname")?.into(),
            app_version: a.field("appversion")?.into(),
            unique_id: a.field("uniqueid")?.into(),
            https_port: num("HttpsPort")? as u16,
            paired: num("PairStatus").unwrap_or(0) == 1,
            current_game: num("currentgame").unwrap_or(0),
            state: a.fields.get("state").cloned().unwrap_or_default(),
            codec_support: num("ServerCodecModeSupport").unwrap_or(1),
        })
    }

    pub fn is_busy(&self) -> bool {
        self.state.ends_with("BUSY") || self.current_game != 0
    }
}

/// One application of `applist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: u32,
    pub title: String,
}

pub fn apps(a: &XmlAnswer) -> Vec<App> {
    a.apps
        .iter()
        .filter_map(|f| {
            Some(App {
                id: f.get("ID")?.parse().ok()?,
                title: f.get("AppTitle").cloned().unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wolf_serverinfo_answer_parses() {
        // Wolf (games-on-whales/wolf, MIT) tests/testMoonlight.cpp, "Mocked serverinfo".
        let body = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<root status_code=\"200\"><hostname>Wolf</hostname><appversion>7.1.431.-1</appversion><GfeVersion>3.23.0.74</GfeVersion><uniqueid>0000-1111-2222-3333</uniqueid><MaxLumaPixelsHEVC>1869449984</MaxLumaPixelsHEVC><ServerCodecModeSupport>257</ServerCodecModeSupport><HttpsPort>0</HttpsPort><ExternalPort>1</ExternalPort><mac>AA:BB:CC:DD</mac><LocalIP>192.168.99.1</LocalIP><SupportedDisplayMode><DisplayMode><Width>1920</Width><Height>1080</Height><RefreshRate>60</RefreshRate></DisplayMode></SupportedDisplayMode><PairStatus>0</PairStatus><currentgame>0</currentgame><state>SUNSHINE_SERVER_FREE</state></root>";
        let a = XmlAnswer::parse(body.as_bytes()).unwrap().ok().unwrap();
        let info = ServerInfo::from_answer(&a).unwrap();
        assert_eq!(info.hostname, "Wolf");
        assert_eq!(info.app_version, "7.1.431.-1");
        assert_eq!(info.codec_support, 257);
        assert!(!info.paired && !info.is_busy());
    }

    #[test]
    fn refusals_become_status_errors() {
        let body = xml(400, "An app is already running on this host", &[]);
        let a = XmlAnswer::parse(body.as_bytes()).unwrap();
        assert_eq!(
            a.ok(),
            Err(HttpError::Status {
                code: 400,
                message: "An app is already running on this host".into()
            })
        );
    }

    #[test]
    fn get_round_trips_through_the_wire() {
        let g = Get::new("/launch")
            .arg("appid", 1)
            .arg("mode", "1920x1080x60")
            .arg("x", "a b&c");
        let wire = g.encode("h");
        assert!(wire.starts_with(b"GET /launch?appid=1&mode=1920x1080x60&x=a%20b%26c HTTP/1.1\r\n"));
        assert_eq!(Get::parse(&wire).unwrap(), Some(g));
        assert_eq!(Get::parse(b"GET / HTTP/1.1\r\n"), Ok(None));
    }

    #[test]
    fn applist_apps_are_read() {
        let body = "<root status_code=\"200\"><App><AppTitle>Desktop</AppTitle><ID>1</ID></App><App><AppTitle>Steam</AppTitle><ID>2</ID></App></root>";
        let a = XmlAnswer::parse(body.as_bytes()).unwrap();
        assert_eq!(
            apps(&a),
            vec![
                App {
                    id: 1,
                    title: "Desktop".into()
                },
                App {
                    id: 2,
                    title: "Steam".into()
                }
            ]
        );
    }
}
