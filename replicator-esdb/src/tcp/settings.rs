//! The .NET ClientAPI connection string a v5 source is reached with
//! (docs/tcp-protocol.md §6): `ConnectTo=tcp://user:pass@host:1113;
//! HeartBeatTimeout=1500; …`, or a cluster found through gossip
//! (`GossipSeeds=…`, `ClusterDns=…`, `ConnectTo=discover://…`, §6.4).
//!
//! Keys are matched as the .NET client matches them: case-insensitively,
//! spaces inside the name ignored (`Heartbeat Timeout`). Unlike the .NET
//! client, a key we do not know is an error naming it, never silently
//! ignored. No error or log shows the password.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use replicator_core::secret::ConnectionString;

use super::discovery::{ClusterSettings, Discovery, GossipSeed, NodePreference, Seeds};

/// The port the .NET client uses when `ConnectTo` has none (2113, not 1113:
/// `uri.IsDefaultPort ? 2113 : uri.Port` in v5 and v22).
const DEFAULT_PORT: u16 = 2113;

/// The gossip port of `ClusterDns` and of `discover://` without a port: the
/// external HTTP port of a v5 node (ES5 `Opts.ExternalHttpPortDefault`), which
/// is also the v22 client's `GossipPort` default. (The v5 client's own
/// default, `ExternalGossipPort` 30778, is the commercial manager's port.)
const DEFAULT_GOSSIP_PORT: u16 = 2113;

/// Keys the .NET client knows that mean nothing for one reader: accepted, and
/// ignored.
const IGNORED: [&str; 12] = [
    "maxretries",
    "maxreconnections",
    "reconnectiondelay",
    "verboselogging",
    "failonnoserverresponse",
    "clientconnectiontimeout",
    "operationtimeoutcheckperiod",
    "queuetimeout",
    "maxqueuesize",
    "maxconcurrentitems",
    "compatibilitymode",
    // v22 only.
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

/// A node's TCP endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which node to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `ConnectTo=tcp://host:port`: that node.
    Node(Endpoint),
    /// `GossipSeeds`, `ClusterDns` or `ConnectTo=discover://`: the node the
    /// cluster's gossip names, found again for every connection. Shared by
    /// the clones of the settings (the reader's and its head probe's), as it
    /// remembers the last gossip as the .NET client does.
    Cluster(Arc<Discovery>),
}

/// Where and how to reach a v5 node over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TcpSettings {
    pub(crate) target: Target,
    /// `RequireMaster` (or v22's `RequireLeader`): sent with every read, so a
    /// follower answers NotHandled NotMaster naming the leader, which the
    /// connection then goes to (true, the .NET default).
    pub(crate) require_master: bool,
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
            target: Target::Node(Endpoint {
                host: String::new(),
                port: DEFAULT_PORT,
            }),
            require_master: true,
            credentials: None,
            heartbeat_interval: Duration::from_millis(750),
            heartbeat_timeout: Duration::from_millis(1500),
            operation_timeout: Duration::from_millis(7000),
            tls: None,
        };
        let mut tls = false;
        let mut validate = false;
        let mut target_host = None;
        let mut seeds = None;
        let mut cluster_dns = None;
        let mut gossip_port = None;
        let mut gossip_timeout = Duration::from_millis(1000);
        let mut max_discover_attempts = 10;
        let mut preference = NodePreference::Master;
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
                "requiremaster" | "requireleader" => {
                    settings.require_master = boolean(&key, &value)?
                }
                "gossipseeds" => seeds = Some(gossip_seeds(&key, &value)?),
                "clusterdns" => {
                    let name = value.trim();
                    if name.is_empty() {
                        return Err(error(format!("setting `{key}` has no name")));
                    }
                    cluster_dns = Some(name.to_owned());
                }
                "externalgossipport" | "gossipport" => gossip_port = Some(port(&key, &value)?),
                "gossiptimeout" => gossip_timeout = millis(&key, &value)?,
                "maxdiscoverattempts" => {
                    max_discover_attempts = value
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            error(format!(
                                "setting `{key}` must be a whole number of at least 1, \
                                 not {value:?}"
                            ))
                        })?
                }
                "nodepreference" => {
                    preference = NodePreference::parse(&value).ok_or_else(|| {
                        error(format!(
                            "setting `{key}` must be Master (Leader), Slave (Follower), \
                             Random or ReadOnlyReplica, not {value:?}"
                        ))
                    })?
                }
                "customhttpmessagehandler" => {
                    return Err(error(format!(
                        "setting `{key}` is not supported: gossip over TLS follows ValidateServer"
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
        if gossip_timeout.is_zero() {
            return Err(error("has a zero GossipTimeout"));
        }
        let cluster = |seeds| {
            Target::Cluster(Arc::new(Discovery::new(ClusterSettings {
                seeds,
                gossip_timeout,
                max_discover_attempts,
                preference,
                validate_server: validate,
            })))
        };
        let mut uri_credentials = None;
        settings.target = match (connect_to, seeds, cluster_dns) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(error(
                    "sets more than one of `ConnectTo`, `GossipSeeds` and `ClusterDns`: \
                     set one (the .NET client refuses ConnectTo with GossipSeeds too)",
                ))
            }
            (Some(connect_to), None, None) => {
                let (uri, credentials) = connect_uri(&connect_to)?;
                uri_credentials = credentials;
                match uri {
                    Uri::Tcp(endpoint) => Target::Node(endpoint),
                    Uri::Discover { name, port } => cluster(Seeds::Dns {
                        name,
                        port: port.or(gossip_port).unwrap_or(DEFAULT_GOSSIP_PORT),
                    }),
                }
            }
            (None, Some(seeds), None) => cluster(Seeds::List(seeds)),
            (None, None, Some(name)) => cluster(Seeds::Dns {
                name,
                port: gossip_port.unwrap_or(DEFAULT_GOSSIP_PORT),
            }),
            (None, None, None) => {
                return Err(error(
                    "has no `ConnectTo=tcp://host:port`, `GossipSeeds=host:port,…` or \
                     `ClusterDns=name`",
                ))
            }
        };
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

fn port(key: &str, value: &str) -> Result<u16, SettingsError> {
    value
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            error(format!(
                "setting `{key}` must be a port (1 to 65535), not {value:?}"
            ))
        })
}

/// `GossipSeeds`: `[http://|https://]host:port,…` (ES5 `ConnectionString.cs`:
/// without a scheme, plain HTTP as in the v5 client).
fn gossip_seeds(key: &str, value: &str) -> Result<Vec<GossipSeed>, SettingsError> {
    let mut seeds = Vec::new();
    for seed in value.split(',') {
        let seed = seed.trim();
        let lower = seed.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("http://") {
            (false, &seed["http://".len()..])
        } else if lower.starts_with("https://") {
            (true, &seed["https://".len()..])
        } else {
            (false, seed)
        };
        let rest = rest.trim_end_matches('/');
        let invalid = || {
            error(format!(
                "setting `{key}` must be a comma-separated list of host:port, and {seed:?} is not"
            ))
        };
        let (host, port_text) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or_else(invalid)?;
                (host, after.strip_prefix(':').ok_or_else(invalid)?)
            }
            None => rest.rsplit_once(':').ok_or_else(invalid)?,
        };
        if host.is_empty() || host.contains(['/', '@', ':']) && !rest.starts_with('[') {
            return Err(invalid());
        }
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                error(format!(
                    "setting `{key}` has an invalid port {port_text:?} (seed {seed:?})"
                ))
            })?;
        seeds.push(GossipSeed {
            host: host.to_owned(),
            port,
            tls,
        });
    }
    Ok(seeds)
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

/// What `ConnectTo` names.
enum Uri {
    /// `tcp://host[:port]`: one node.
    Tcp(Endpoint),
    /// `discover://name[:port]`: DNS discovery, the port the gossip port.
    Discover { name: String, port: Option<u16> },
}

/// `tcp://[user:pass@]host[:port][/]` or `discover://[user:pass@]name[:port]`.
fn connect_uri(uri: &str) -> Result<(Uri, Option<Credentials>), SettingsError> {
    let uri = uri.trim();
    let scheme_end = uri.find("://").unwrap_or(0);
    let scheme = uri[..scheme_end].to_ascii_lowercase();
    let discover = match scheme.as_str() {
        "tcp" => false,
        "discover" => true,
        _ => {
            return Err(error(
                "setting `ConnectTo` must be tcp://[user:password@]host:port or \
                 discover://[user:password@]name:gossip-port",
            ))
        }
    };
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
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    error(format!(
                        "setting `ConnectTo` has an invalid port {port:?} (host {host})"
                    ))
                })?,
        ),
    };
    let uri = if discover {
        Uri::Discover {
            name: host.to_owned(),
            port,
        }
    } else {
        Uri::Tcp(Endpoint {
            host: host.to_owned(),
            port: port.unwrap_or(DEFAULT_PORT),
        })
    };
    Ok((uri, credentials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TcpSettings, SettingsError> {
        TcpSettings::parse(&ConnectionString::from(text))
    }

    fn node(s: &TcpSettings) -> (&str, u16) {
        match &s.target {
            Target::Node(e) => (e.host.as_str(), e.port),
            Target::Cluster(_) => panic!("not one node"),
        }
    }

    fn cluster(s: &TcpSettings) -> &ClusterSettings {
        match &s.target {
            Target::Cluster(d) => d.settings(),
            Target::Node(_) => panic!("not a cluster"),
        }
    }

    fn seed(host: &str, port: u16, tls: bool) -> GossipSeed {
        GossipSeed {
            host: host.into(),
            port,
            tls,
        }
    }

    #[test]
    fn cluster_settings_are_read_as_the_v5_client_reads_them() {
        let s = parse(
            "GossipSeeds=10.0.0.1:2113, es2:2113,http://es3:2114, https://[::1]:2115; \
             DefaultUserCredentials=admin:changeit",
        )
        .unwrap();
        let c = cluster(&s);
        assert_eq!(
            c.seeds,
            Seeds::List(vec![
                seed("10.0.0.1", 2113, false),
                seed("es2", 2113, false),
                seed("es3", 2114, false),
                seed("::1", 2115, true),
            ])
        );
        // The .NET defaults.
        assert_eq!(c.gossip_timeout, Duration::from_millis(1000));
        assert_eq!(c.max_discover_attempts, 10);
        assert_eq!(c.preference, NodePreference::Master);
        assert!(s.require_master);
        assert_eq!(s.credentials.unwrap().login, "admin");

        let s = parse(
            "ClusterDns=es.local; ExternalGossipPort=30778; GossipTimeout=250; \
             MaxDiscoverAttempts=3; NodePreference=follower; RequireMaster=false",
        )
        .unwrap();
        let c = cluster(&s);
        assert_eq!(
            c.seeds,
            Seeds::Dns {
                name: "es.local".into(),
                port: 30778
            }
        );
        assert_eq!(c.gossip_timeout, Duration::from_millis(250));
        assert_eq!(c.max_discover_attempts, 3);
        assert_eq!(c.preference, NodePreference::Slave);
        assert!(!s.require_master);
        assert_eq!(
            cluster(&parse("ClusterDns=es.local").unwrap()).seeds,
            Seeds::Dns {
                name: "es.local".into(),
                port: 2113
            }
        );

        let s = parse("ConnectTo=discover://ops:pw@es.local:2114; GossipPort=9").unwrap();
        assert_eq!(
            cluster(&s).seeds,
            Seeds::Dns {
                name: "es.local".into(),
                port: 2114
            }
        );
        assert_eq!(s.credentials.unwrap().login, "ops");
        let s = parse("ConnectTo=discover://es.local; GossipPort=2200").unwrap();
        assert_eq!(
            cluster(&s).seeds,
            Seeds::Dns {
                name: "es.local".into(),
                port: 2200
            }
        );
        assert!(
            !parse("ConnectTo=tcp://h:1113; RequireLeader=false")
                .unwrap()
                .require_master
        );
    }

    #[test]
    fn bad_cluster_settings_name_the_key() {
        for (text, key) in [
            ("GossipSeeds=a", "`GossipSeeds`"),
            ("GossipSeeds=a:0", "`GossipSeeds`"),
            ("GossipSeeds=a:2113,", "`GossipSeeds`"),
            ("GossipSeeds=a:b:2113", "`GossipSeeds`"),
            ("GossipSeeds=a:99999", "`GossipSeeds`"),
            (
                "ClusterDns=es; ExternalGossipPort=0",
                "`ExternalGossipPort`",
            ),
            ("ClusterDns=es; GossipPort=x", "`GossipPort`"),
            ("ClusterDns=", "`ClusterDns`"),
            ("ClusterDns=es; NodePreference=Nearest", "`NodePreference`"),
            (
                "ClusterDns=es; MaxDiscoverAttempts=0",
                "`MaxDiscoverAttempts`",
            ),
            ("ClusterDns=es; GossipTimeout=1s", "`GossipTimeout`"),
            ("ClusterDns=es; RequireMaster=yes", "`RequireMaster`"),
            ("ConnectTo=discover://es:0", "port"),
            ("ConnectTo=tcp://h:1113; GossipSeeds=a:2113", "GossipSeeds"),
            ("ConnectTo=tcp://h:1113; ClusterDns=es", "ClusterDns"),
            ("GossipSeeds=a:2113; ClusterDns=es", "ClusterDns"),
            ("ClusterDns=es; GossipTimeout=0", "GossipTimeout"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn the_csharp_form_is_read() {
        let s = parse(
            "ConnectTo=tcp://admin:changeit@es1:1113; HeartBeatTimeout=5000; \
             UseSslConnection=false; ValidateServer=false; DefaultUserCredentials=ops:secret",
        )
        .unwrap();
        assert_eq!(node(&s), ("es1", 1113));
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
        assert_eq!(node(&s), ("::1", 1113));
        let c = s.credentials.unwrap();
        assert_eq!((c.login.as_str(), c.password.as_str()), ("ops", "p;w\"d"));
        assert_eq!(s.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(node(&parse("ConnectTo=tcp://h").unwrap()).1, 2113);
    }

    #[test]
    fn errors_name_the_setting_and_never_the_password() {
        let e = parse("ConnectTo=tcp://admin:hunter2@h:1113; Colour=blue").unwrap_err();
        assert!(e.to_string().contains("`Colour`"), "{e}");
        let e = parse("ConnectTo=udp://admin:hunter2@h:2113").unwrap_err();
        assert!(e.to_string().contains("discover://"), "{e}");
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
            parse("ConnectTo=discover://admin:hunter2@h:0").unwrap_err(),
            parse("ConnectTo=udp://admin:hunter2@h:2113").unwrap_err(),
            parse("ConnectTo=tcp://admin:hunter2@h:port").unwrap_err(),
            parse("esdb://admin:hunter2@h:2113?tls=false").unwrap_err(),
            parse("ConnectTo=tcp://h:1113; admin:hunter2@x=1").unwrap_err(),
        ] {
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
