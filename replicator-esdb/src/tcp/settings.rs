//! The .NET ClientAPI connection string a v5 source is reached with
//! (docs/tcp-protocol.md §6): `ConnectTo=tcp://user:pass@host:1113;
//! HeartBeatTimeout=1500; …`.
//!
//! Keys are matched as the .NET client matches them: case-insensitively,
//! spaces inside the name ignored (`Heartbeat Timeout`). Unlike the .NET
//! client, a key we do not know is an error naming it, never silently
//! ignored. No error or log shows the password.

use std::fmt;
use std::time::Duration;

use replicator_core::secret::ConnectionString;

/// The port the .NET client uses when `ConnectTo` has none (2113, not 1113:
/// `uri.IsDefaultPort ? 2113 : uri.Port` in v5 and v22).
const DEFAULT_PORT: u16 = 2113;

/// Keys the .NET client knows that mean nothing for one reader on one node:
/// accepted, and ignored.
const IGNORED: [&str; 19] = [
    "maxretries",
    "maxreconnections",
    "reconnectiondelay",
    "requiremaster",
    "requireleader",
    "verboselogging",
    "failonnoserverresponse",
    "clientconnectiontimeout",
    "operationtimeoutcheckperiod",
    "queuetimeout",
    "maxqueuesize",
    "maxconcurrentitems",
    "gossiptimeout",
    "maxdiscoverattempts",
    "externalgossipport",
    "gossipport",
    "compatibilitymode",
    "nodepreference",
    "retryauthenticationontimeout",
];

/// Login and password sent in `Authenticate`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) login: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Where and how to reach a v5 node over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpSettings {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<Credentials>,
    /// `HeartbeatInterval`: silence after which we send a HeartbeatRequest
    /// (750 ms, the .NET default).
    pub(crate) heartbeat_interval: Duration,
    /// `HeartbeatTimeout`: how long after that heartbeat any frame must come
    /// (1500 ms).
    pub(crate) heartbeat_timeout: Duration,
    /// `OperationTimeout`: the deadline of a connection attempt and of each
    /// request (7000 ms).
    pub(crate) operation_timeout: Duration,
    /// `UseSslConnection=true`: TLS, how it checks the node.
    pub(crate) tls: Option<Tls>,
}

/// TLS to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tls {
    /// `ValidateServer`: check the node's certificate against the platform's
    /// trusted roots and its name (default false, as in v5).
    pub(crate) validate: bool,
    /// `TargetHost`: the name the certificate must carry; the host of
    /// `ConnectTo` when absent.
    pub(crate) target_host: Option<String>,
}

/// A connection string that cannot be used; the message names the setting
/// and never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the TCP connection string {0}")]
pub struct SettingsError(String);

fn error(message: impl Into<String>) -> SettingsError {
    SettingsError(message.into())
}

impl TcpSettings {
    /// Parses `ConnectTo=tcp://…; Key=Value; …`.
    pub(crate) fn parse(text: &ConnectionString) -> Result<TcpSettings, SettingsError> {
        let mut connect_to = None;
        let mut default_credentials = None;
        let mut settings = TcpSettings {
            host: String::new(),
            port: DEFAULT_PORT,
            credentials: None,
            heartbeat_interval: Duration::from_millis(750),
            heartbeat_timeout: Duration::from_millis(1500),
            operation_timeout: Duration::from_millis(7000),
            tls: None,
        };
        let mut tls = false;
        let mut validate = false;
        let mut target_host = None;
        let written = text.expose().trim_start();
        if written
            .find("://")
            .is_some_and(|i| !written[..i].contains(['=', ';']))
        {
            return Err(error(
                "is a URL; a TCP source takes the .NET form \
                 `ConnectTo=tcp://user:password@host:1113; HeartBeatTimeout=1500; …`",
            ));
        }
        for (key, value) in pairs(written)? {
            if !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_')
            {
                // Not a name: it may hold a password typed in the wrong place.
                return Err(error("has a setting whose name is not a name (not shown)"));
            }
            let normal: String = key
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_lowercase();
            match normal.as_str() {
                "connectto" => connect_to = Some(value),
                "defaultusercredentials" => {
                    default_credentials =
                        Some(credentials(&value).ok_or_else(|| {
                            error(format!("setting `{key}` must be `user:password`"))
                        })?)
                }
                "heartbeatinterval" => settings.heartbeat_interval = millis(&key, &value)?,
                "heartbeattimeout" => settings.heartbeat_timeout = millis(&key, &value)?,
                "operationtimeout" => settings.operation_timeout = millis(&key, &value)?,
                "usesslconnection" => tls = boolean(&key, &value)?,
                "validateserver" => validate = boolean(&key, &value)?,
                "targethost" => {
                    target_host = Some(value.trim().to_owned()).filter(|h| !h.is_empty())
                }
                "gossipseeds" | "clusterdns" | "customhttpmessagehandler" => {
                    return Err(error(format!(
                        "setting `{key}` is not supported yet: connect to one node with \
                         ConnectTo=tcp://host:port"
                    )))
                }
                other if IGNORED.contains(&other) => {}
                _ => return Err(error(format!("has an unknown setting `{key}`"))),
            }
        }
        if tls {
            settings.tls = Some(Tls {
                validate,
                target_host,
            });
        }
        let Some(connect_to) = connect_to else {
            return Err(error("has no `ConnectTo=tcp://host:port`"));
        };
        let (host, port, uri_credentials) = connect_uri(&connect_to)?;
        settings.host = host;
        settings.port = port;
        // As in the .NET client, credentials in the URI win.
        settings.credentials = uri_credentials.or(default_credentials);
        if let Some(credentials) = &settings.credentials {
            // v20+ servers read a first byte >= 0x80 as a token length, and
            // they and the v22 client allow 127 bytes (docs §1.3).
            if credentials.login.len() > 127 || credentials.password.len() > 127 {
                return Err(error("has a login or password longer than 127 bytes"));
            }
        }
        if settings.heartbeat_interval.is_zero() || settings.heartbeat_timeout.is_zero() {
            return Err(error("has a zero heartbeat interval or timeout"));
        }
        if settings.operation_timeout.is_zero() {
            return Err(error("has a zero OperationTimeout"));
        }
        Ok(settings)
    }
}

/// `key=value` pairs separated by `;`, values optionally quoted with `"` or
/// `'` (a doubled quote inside stands for one), as `DbConnectionStringBuilder`
/// reads them.
fn pairs(text: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut pairs = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ';' || c.is_whitespace());
        if rest.is_empty() {
            return Ok(pairs);
        }
        let Some((key, after)) = rest.split_once('=') else {
            return Err(error("has a part without `key=value`"));
        };
        if key.contains(';') {
            return Err(error("has a part without `key=value`"));
        }
        let key = key.trim().to_owned();
        let after = after.trim_start();
        let (value, tail) = match after.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let mut value = String::new();
                let mut chars = after[1..].char_indices().peekable();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == quote {
                        if chars.peek().is_some_and(|&(_, n)| n == quote) {
                            chars.next();
                            value.push(quote);
                            continue;
                        }
                        end = Some(i + 2);
                        break;
                    }
                    value.push(c);
                }
                let Some(end) = end else {
                    return Err(error(format!("setting `{key}` has an unclosed quote")));
                };
                let tail = after[end..].trim_start();
                if !(tail.is_empty() || tail.starts_with(';')) {
                    return Err(error(format!(
                        "setting `{key}` has text after its closing quote"
                    )));
                }
                (value, tail)
            }
            _ => match after.split_once(';') {
                Some((value, tail)) => (value.trim().to_owned(), tail),
                None => (after.trim().to_owned(), ""),
            },
        };
        pairs.push((key, value));
        rest = tail;
    }
}

fn credentials(text: &str) -> Option<Credentials> {
    let mut parts = text.split(':');
    let (Some(login), Some(password), None) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    Some(Credentials {
        login: login.to_owned(),
        password: password.to_owned(),
    })
}

fn millis(key: &str, value: &str) -> Result<Duration, SettingsError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| {
            error(format!(
                "setting `{key}` must be a whole number of milliseconds, not {value:?}"
            ))
        })
}

fn boolean(key: &str, value: &str) -> Result<bool, SettingsError> {
    match value.trim() {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(error(format!(
            "setting `{key}` must be true or false, not {value:?}"
        ))),
    }
}

/// `tcp://[user:pass@]host[:port][/]`.
fn connect_uri(uri: &str) -> Result<(String, u16, Option<Credentials>), SettingsError> {
    let uri = uri.trim();
    let scheme_end = uri.find("://").unwrap_or(0);
    let scheme = uri[..scheme_end].to_ascii_lowercase();
    match scheme.as_str() {
        "tcp" => {}
        "discover" => {
            return Err(error(
                "sets `ConnectTo=discover://…`: cluster discovery is not supported yet; \
                 connect to one node with ConnectTo=tcp://host:port",
            ))
        }
        _ => {
            return Err(error(
                "setting `ConnectTo` must be tcp://[user:password@]host:port",
            ))
        }
    }
    let rest = &uri[scheme_end + 3..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (user_info, host_port) = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => (Some(user_info), host_port),
        None => (None, authority),
    };
    let credentials = match user_info {
        None => None,
        Some(info) => Some(credentials(info).ok_or_else(|| {
            error("setting `ConnectTo` must carry its credentials as user:password@")
        })?),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(error("setting `ConnectTo` has an unclosed `[` in its host"));
        };
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(error("setting `ConnectTo` has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                error(format!(
                    "setting `ConnectTo` has an invalid port {port:?} (host {host})"
                ))
            })?,
    };
    Ok((host.to_owned(), port, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TcpSettings, SettingsError> {
        TcpSettings::parse(&ConnectionString::from(text))
    }

    #[test]
    fn the_csharp_form_is_read() {
        let s = parse(
            "ConnectTo=tcp://admin:changeit@es1:1113; HeartBeatTimeout=5000; \
             UseSslConnection=false; ValidateServer=false; DefaultUserCredentials=ops:secret",
        )
        .unwrap();
        assert_eq!((s.host.as_str(), s.port), ("es1", 1113));
        let c = s.credentials.unwrap();
        // The URI's credentials win over DefaultUserCredentials.
        assert_eq!(
            (c.login.as_str(), c.password.as_str()),
            ("admin", "changeit")
        );
        assert_eq!(s.heartbeat_timeout, Duration::from_millis(5000));
        assert_eq!(s.heartbeat_interval, Duration::from_millis(750));
        assert_eq!(s.operation_timeout, Duration::from_millis(7000));
    }

    #[test]
    fn keys_ignore_case_and_spaces_and_values_may_be_quoted() {
        let s = parse(
            "connectto = 'tcp://[::1]:1113' ; Default User Credentials=\"ops:p;w\"\"d\"; \
             heartbeat interval=100; RequireMaster=false",
        )
        .unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 1113));
        let c = s.credentials.unwrap();
        assert_eq!((c.login.as_str(), c.password.as_str()), ("ops", "p;w\"d"));
        assert_eq!(s.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(parse("ConnectTo=tcp://h").unwrap().port, 2113);
    }

    #[test]
    fn errors_name_the_setting_and_never_the_password() {
        let e = parse("ConnectTo=tcp://admin:hunter2@h:1113; Colour=blue").unwrap_err();
        assert!(e.to_string().contains("`Colour`"), "{e}");
        let e = parse("ConnectTo=tcp://h:1113; GossipSeeds=a:2113,b:2113").unwrap_err();
        assert!(
            e.to_string().contains("`GossipSeeds` is not supported yet"),
            "{e}"
        );
        let e = parse("ConnectTo=discover://admin:hunter2@h:2113").unwrap_err();
        assert!(e.to_string().contains("discover"), "{e}");
        let e = parse("ConnectTo=tcp://h:1113; DefaultUserCredentials=a:hunter2:x").unwrap_err();
        assert!(e.to_string().contains("`DefaultUserCredentials`"), "{e}");
        let e = parse("ConnectTo=tcp://admin:hunter2@h:port").unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = parse("ConnectTo=tcp://h:1113; HeartbeatTimeout=1.5s").unwrap_err();
        assert!(e.to_string().contains("`HeartbeatTimeout`"), "{e}");
        let s =
            parse("ConnectTo=tcp://h:1115; UseSslConnection=true; TargetHost=es.local").unwrap();
        assert_eq!(
            s.tls,
            Some(Tls {
                validate: false,
                target_host: Some("es.local".into())
            })
        );
        assert_eq!(
            parse("ConnectTo=tcp://h:1113; ValidateServer=true")
                .unwrap()
                .tls,
            None
        );
        let e = parse("ConnectTo=tcp://h:1113; UseSslConnection=yes").unwrap_err();
        assert!(e.to_string().contains("`UseSslConnection`"), "{e}");
        let e = parse("esdb://admin:hunter2@h:2113?tls=false").unwrap_err();
        assert!(e.to_string().contains("ConnectTo=tcp://"), "{e}");
        let e = parse("ConnectTo=tcp://h:1113; admin:hunter2@x=1").unwrap_err();
        assert!(e.to_string().contains("not a name"), "{e}");
        let e = parse("HeartbeatTimeout=10").unwrap_err();
        assert!(e.to_string().contains("ConnectTo"), "{e}");
        for e in [
            parse("ConnectTo=tcp://admin:hunter2@h:1113; Colour=blue").unwrap_err(),
            parse("ConnectTo=discover://admin:hunter2@h:2113").unwrap_err(),
            parse("ConnectTo=tcp://admin:hunter2@h:port").unwrap_err(),
            parse("esdb://admin:hunter2@h:2113?tls=false").unwrap_err(),
            parse("ConnectTo=tcp://h:1113; admin:hunter2@x=1").unwrap_err(),
        ] {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
