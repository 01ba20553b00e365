//! TLS and basic authentication for the testkit server, as a secure
//! EventStoreDB/KurrentDB node serves them (every production cluster, Kurrent
//! Cloud).
//!
//! - **TLS**: [`TestCertificates::generate`] makes a private CA and a server
//!   certificate for `localhost` and `127.0.0.1` signed by it, at test time; the
//!   client trusts the CA through `tlsCaFile` in its connection string
//!   ([`TestCertificates::write_ca`]). The server speaks HTTP/2 over TLS (ALPN
//!   `h2`) with the aws-lc provider, passed explicitly: the `eventstore` client
//!   installs that provider as the process default itself and panics if another
//!   was installed first.
//! - **Users**: `authorization: Basic base64(user:password)` on every Streams call.
//!   [`User::admin`] is the server's default `admin:changeit` (a member of
//!   `$admins`); [`User::new`] makes an ordinary user.
//! - **Access**, the real server's default ACL, simplified: `$admins` may do
//!   everything; an ordinary user may read, write and delete user streams (and
//!   their `$$` metadata streams) but not read `$all` nor touch `$`-streams;
//!   without credentials nothing on the Streams service is allowed, as on a node
//!   without anonymous stream access (not checked against every server version).
//!   `ServerFeatures` and `Gossip` need no credentials (clients call them to
//!   connect).
//! - **Bearer tokens** (KurrentDB's OAuth authentication): with
//!   [`ServerOptions::bearer_tokens`](crate::ServerOptions::bearer_tokens), an
//!   `authorization: Bearer <token>` header names the user its token was
//!   accepted for ([`BearerTokens::accept`]); a token never accepted or since
//!   revoked ([`BearerTokens::revoke`], how a test expires one mid-run) is
//!   `Unauthenticated`, as the real server's HTTP authentication layer answers
//!   a token it cannot validate (expired, bad signature). The server checks no
//!   token's content: which tokens are valid is the test's decision. Without
//!   `bearer_tokens` (and with users), a Bearer header is `Unauthenticated` too.
//! - **Answers**: a wrong password or unknown user (or a malformed header) is
//!   `Unauthenticated` (what gRPC clients see of the real server's refusal in its
//!   HTTP authentication layer; the message is ours); a call the user may not make is `PermissionDenied`,
//!   `Access Denied`, header `exception: access-denied` (unary calls and reads), or
//!   in a batch append the batch's error `PermissionDenied` with the typed
//!   `AccessDenied` detail.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::TestkitError;

/// A user the server knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Member of `$admins`: may read `$all` and `$`-streams.
    pub admin: bool,
}

impl User {
    /// The server's default administrator, `admin:changeit`.
    pub fn admin() -> User {
        User {
            name: "admin".to_owned(),
            password: "changeit".to_owned(),
            admin: true,
        }
    }

    /// An ordinary user: user streams only.
    pub fn new(name: &str, password: &str) -> User {
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            admin: false,
        }
    }
}

/// The bearer tokens a server accepts, each for a user. Cheap to clone: every
/// clone is the same set, so a test keeps one to accept and revoke tokens while
/// the server runs. `Debug` shows how many there are, never a token.
#[derive(Clone, Default)]
pub struct BearerTokens {
    tokens: std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, User>>>,
}

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerTokens")
            .field("accepted", &self.read().len())
            .finish()
    }
}

impl BearerTokens {
    /// No token accepted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` from now on as `user` (its password is not used).
    pub fn accept(&self, token: &str, user: User) -> &Self {
        self.write().insert(token.to_owned(), user);
        self
    }

    /// Refuses `token` from now on (`Unauthenticated`), as an expired one.
    pub fn revoke(&self, token: &str) -> &Self {
        self.write().remove(token);
        self
    }

    fn user(&self, token: &str) -> Option<User> {
        self.read().get(token).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, User>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashMap<String, User>> {
        self.tokens.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Who makes a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Principal {
    /// No users configured: everything is allowed, as on an insecure node.
    Unrestricted,
    /// Users configured, no credentials sent.
    Anonymous,
    User {
        admin: bool,
    },
}

/// Why a call is refused before it is served.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Credentials sent but wrong.
    Unauthenticated,
}

/// The caller of a request with these `authorization` header bytes, given the
/// configured `users` (`None`: no authentication).
pub(crate) fn principal(
    users: Option<&[User]>,
    authorization: Option<&[u8]>,
) -> Result<Principal, Refusal> {
    principal_with(users, None, authorization)
}

/// [`principal`], with the bearer `tokens` the server accepts (`None`: no
/// token is; authentication is on when either `users` or `tokens` is set).
pub(crate) fn principal_with(
    users: Option<&[User]>,
    tokens: Option<&BearerTokens>,
    authorization: Option<&[u8]>,
) -> Result<Principal, Refusal> {
    if users.is_none() && tokens.is_none() {
        return Ok(Principal::Unrestricted);
    }
    let Some(header) = authorization else {
        return Ok(Principal::Anonymous);
    };
    let header = std::str::from_utf8(header).map_err(|_| Refusal::Unauthenticated)?;
    if let Some(token) = header.strip_prefix("Bearer ") {
        return tokens
            .and_then(|tokens| tokens.user(token.trim()))
            .map(|user| Principal::User { admin: user.admin })
            .ok_or(Refusal::Unauthenticated);
    }
    let users = users.unwrap_or_default();
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or(Refusal::Unauthenticated)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| Refusal::Unauthenticated)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Refusal::Unauthenticated)?;
    let (name, password) = decoded.split_once(':').ok_or(Refusal::Unauthenticated)?;
    login(Some(users), name, password)
}

/// The caller with this login and password (the legacy TCP protocol carries them
/// in the clear in each frame's header), given the configured `users`.
pub(crate) fn login(
    users: Option<&[User]>,
    name: &str,
    password: &str,
) -> Result<Principal, Refusal> {
    let Some(users) = users else {
        return Ok(Principal::Unrestricted);
    };
    users
        .iter()
        .find(|u| u.name == name && u.password == password)
        .map(|u| Principal::User { admin: u.admin })
        .ok_or(Refusal::Unauthenticated)
}

/// What a call does to a stream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Whether `principal` may `access` `stream` (`$all` for reads of the log).
pub(crate) fn allowed(principal: &Principal, stream: &str, _access: Access) -> bool {
    match principal {
        Principal::Unrestricted | Principal::User { admin: true } => true,
        Principal::Anonymous => false,
        Principal::User { admin: false } => {
            // `$$name` is the metadata of `name`: it follows that stream's rules.
            let described = stream.strip_prefix("$$").unwrap_or(stream);
            !described.starts_with('$')
        }
    }
}

/// A private CA and a server certificate it signed, in PEM.
#[derive(Clone, Debug)]
pub struct TestCertificates {
    /// The CA's certificate: what clients trust (`tlsCaFile`).
    pub ca_pem: String,
    /// The server's certificate (for `localhost`, `127.0.0.1` and the given
    /// names).
    pub cert_pem: String,
    /// The server certificate's private key.
    pub key_pem: String,
}

impl TestCertificates {
    /// A fresh CA and a server certificate for `localhost`, `127.0.0.1` and
    /// `extra_names`.
    ///
    /// # Errors
    /// When key generation or signing fails.
    pub fn generate(extra_names: &[&str]) -> Result<TestCertificates, TestkitError> {
        let failed =
            |e: rcgen::Error| TestkitError::Security(format!("generating certificates: {e}"));
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "replicator-testkit CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
        let ca = ca_params.self_signed(&ca_key).map_err(failed)?;

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(extra_names.iter().map(|n| (*n).to_owned()));
        let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "eventstoredb-node");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(failed)?;
        Ok(TestCertificates {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA certificate to `dir/ca.crt` and returns its path, for
    /// `tlsCaFile=`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, TestkitError> {
        let path = dir.join("ca.crt");
        std::fs::write(&path, &self.ca_pem)
            .map_err(|e| TestkitError::Security(format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }

    /// The rustls server configuration serving this certificate over HTTP/2.
    pub(crate) fn server_config(&self) -> std::io::Result<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| invalid(&e))?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&e))?;
        // HTTP/1.1 too: the HTTP API shares the port (projection routes).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// `user:password` as the `authorization` header value.
pub fn basic_authorization(name: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{name}:{password}"));
    format!("Basic {encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        vec![User::admin(), User::new("reader", "secret")]
    }

    #[test]
    fn credentials_decide_the_principal() {
        let users = users();
        let p = |h: Option<String>| principal(Some(&users), h.as_deref().map(str::as_bytes));
        assert_eq!(
            p(Some(basic_authorization("admin", "changeit"))).ok(),
            Some(Principal::User { admin: true })
        );
        assert_eq!(
            p(Some(basic_authorization("reader", "secret"))).ok(),
            Some(Principal::User { admin: false })
        );
        assert!(p(Some(basic_authorization("admin", "wrong"))).is_err());
        assert!(p(Some(basic_authorization("nobody", "changeit"))).is_err());
        assert!(p(Some("Bearer x".to_owned())).is_err());
        assert_eq!(p(None).ok(), Some(Principal::Anonymous));
        assert_eq!(
            principal(None, Some(b"Basic !!")).ok(),
            Some(Principal::Unrestricted)
        );
    }

    #[test]
    fn bearer_tokens_are_accepted_until_revoked() {
        let tokens = BearerTokens::new();
        tokens.accept("t0k3n-a", User::admin());
        tokens.accept("t0k3n-b", User::new("ops", ""));
        let p = |users: Option<&[User]>, h: &str| {
            principal_with(users, Some(&tokens), Some(h.as_bytes())).ok()
        };
        assert_eq!(
            p(None, "Bearer t0k3n-a"),
            Some(Principal::User { admin: true })
        );
        assert_eq!(
            p(None, "Bearer t0k3n-b"),
            Some(Principal::User { admin: false })
        );
        assert_eq!(p(None, "Bearer other"), None);
        // Tokens only: a basic header names no known user.
        assert_eq!(p(None, &basic_authorization("admin", "changeit")), None);
        let users = users();
        assert_eq!(
            p(Some(&users), &basic_authorization("admin", "changeit")),
            Some(Principal::User { admin: true })
        );
        tokens.revoke("t0k3n-a");
        assert_eq!(p(None, "Bearer t0k3n-a"), None);
        assert!(!format!("{tokens:?}").contains("t0k3n"), "{tokens:?}");
    }

    #[test]
    fn ordinary_users_keep_to_user_streams() {
        let user = Principal::User { admin: false };
        assert!(allowed(&user, "orders-1", Access::Read));
        assert!(allowed(&user, "$$orders-1", Access::Write));
        assert!(!allowed(&user, "$all", Access::Read));
        assert!(!allowed(&user, "$ce-orders", Access::Read));
        assert!(!allowed(&user, "$$$ce-orders", Access::Read));
        assert!(allowed(
            &Principal::User { admin: true },
            "$all",
            Access::Read
        ));
        assert!(!allowed(&Principal::Anonymous, "orders-1", Access::Read));
    }
}
