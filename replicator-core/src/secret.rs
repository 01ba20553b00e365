//! Connection strings and URLs that may carry credentials, and the one rule
//! that hides those credentials wherever a user could read them.
//!
//! A [`ConnectionString`] prints (`Debug`, `Display`) its redacted form; only
//! [`ConnectionString::expose`] gives the string as written, for the code that
//! connects. A [`Scrubber`] hides the credentials of some connection strings,
//! and of any URL carrying credentials, in free text such as a driver's error
//! message.
//!
//! ```
//! use replicator_core::secret::{ConnectionString, Scrubber};
//!
//! let source = ConnectionString::from("esdb://admin:changeit@source:2113?tls=false");
//! assert_eq!(source.to_string(), "esdb://admin:***@source:2113?tls=false");
//! assert_eq!(format!("{source:?}"), "\"esdb://admin:***@source:2113?tls=false\"");
//! assert_eq!(source.expose(), "esdb://admin:changeit@source:2113?tls=false");
//!
//! let scrubber = Scrubber::of([&source]);
//! assert_eq!(
//!     scrubber.scrub("login changeit refused by esdb://admin:changeit@other:2113"),
//!     "login *** refused by esdb://admin:***@other:2113"
//! );
//! ```
//!
//! # The rule
//! What is hidden (each part replaced by `***`), erring on the side of hiding:
//!
//! 1. **With a `scheme://`.** The user info ends at the last `@` of the
//!    authority (which ends at the first `/`, `?` or `#`). When the authority
//!    holds no `@` but the string does further on, a password with an
//!    unescaped `/`, `?` or `#` may have cut the authority short, so the user
//!    info ends at the last `@` of the string (which hides too much when that
//!    `@` is in the query: `esdb://h:2113/?x=a@b` shows `esdb://h:***@b`).
//!    The password, everything after the
//!    first `:` of the user info, is hidden; a user info without `:` is a user
//!    name and is kept (`mongodb://user@db` is shown as it is).
//! 2. **Without a `scheme://`** (a typo, `admin:pw@host`, `host:pw`): the
//!    string cannot be parsed with confidence. When it holds an `@`, the whole
//!    user info before its last `@` is hidden (`***@host:2113`). Otherwise,
//!    when it holds a `:` that is not followed by a port (digits ending the
//!    string or followed by `/`, `?`, `,` or `;`), everything after that `:` is
//!    hidden (`garbage:***`).
//! 3. **Query parameters** (after the first `?`) whose name holds `pass`,
//!    `pwd`, `secret`, `token`, `key`, `sig` or `credential` (any case) have
//!    their value hidden (`?apiKey=***`).
//!
//! 4. **.NET ClientAPI settings** (`ConnectTo=tcp://…; DefaultUserCredentials=user:password`,
//!    the form of a v5 source): the password of a `DefaultUserCredentials`
//!    setting (the whole value when it has no `:`) is hidden, whatever the case
//!    and spacing of the key.
//! 5. **librdkafka settings** (`bootstrap.servers=host:9092;sasl.password=…`,
//!    the Kafka sink's form): the value of a `key=value` setting whose key is
//!    a dotted name (letters, digits, `.`, `_`, `-`) holding one of the words
//!    of rule 3 is hidden (`sasl.password=***`).
//!
//! The secrets a [`Scrubber`] looks for in free text are the hidden parts,
//! as written and percent-decoded, and for rule 2 the part after the user
//! info's first `:` as well.

use std::convert::Infallible;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// What replaces a hidden part.
const HIDDEN: &str = "***";

/// Query parameter names whose values are hidden, lower case, as parts of
/// the name.
const SECRET_PARAMETERS: [&str; 7] = ["pass", "pwd", "secret", "token", "key", "sig", "credential"];

/// Known secrets shorter than this are hidden only as whole words: as a part
/// of any word they would blank out ordinary letters of every message.
const SHORT_SECRET: usize = 4;

/// A connection string or URL that may hold a password (`esdb://…`,
/// `mongodb://…`, an `http://user:token@…` URL).
///
/// `Debug` and `Display` print the redacted form (see the
/// [module docs](self) for the rule), so a config holding one can derive
/// `Debug` and be logged. [`ConnectionString::expose`] is the string as
/// written, for the code that connects and nothing else.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnectionString(String);

impl ConnectionString {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        ConnectionString(text.into())
    }

    /// The string as written, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The string with its credentials replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Whether the string is empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The secrets [`ConnectionString::redacted`] hides, each as written and,
    /// when that differs, percent-decoded: what to look for in the messages of
    /// the driver that was given the string. Empty when nothing is hidden.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        let mut add = |text: &str| {
            for secret in [text.to_owned(), percent_decode(text)] {
                if !secret.is_empty() && !secrets.contains(&secret) {
                    secrets.push(secret);
                }
            }
        };
        for hidden in hidden_parts(&self.0) {
            let text = &self.0[hidden.range];
            add(text);
            if hidden.user_info {
                if let Some((_, password)) = text.split_once(':') {
                    add(password);
                }
            }
        }
        secrets
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Compares the string as written (config tests compare what was read).
impl PartialEq<str> for ConnectionString {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ConnectionString {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl FromStr for ConnectionString {
    type Err = Infallible;

    fn from_str(text: &str) -> Result<Self, Infallible> {
        Ok(ConnectionString::new(text))
    }
}

impl From<String> for ConnectionString {
    fn from(text: String) -> Self {
        ConnectionString(text)
    }
}

impl From<&String> for ConnectionString {
    fn from(text: &String) -> Self {
        ConnectionString(text.clone())
    }
}

impl From<&str> for ConnectionString {
    fn from(text: &str) -> Self {
        ConnectionString(text.to_owned())
    }
}

/// Hides secrets in free text: the [`ConnectionString::secrets`] of the
/// strings it was made of (and any added with [`Scrubber::add`]), and the
/// credentials of any word that looks like a connection string (holds `://`
/// or `@`), by the [module's rule](self).
///
/// `Debug` shows only how many secrets it knows.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so that a secret holding a shorter one goes whole.
    secrets: Vec<String>,
}

impl Scrubber {
    /// A scrubber of the secrets of `strings`.
    pub fn of<'a>(strings: impl IntoIterator<Item = &'a ConnectionString>) -> Self {
        let mut scrubber = Scrubber::default();
        for string in strings {
            for secret in string.secrets() {
                scrubber.add(secret);
            }
        }
        scrubber
    }

    /// Also hides `secret` (a password a driver decoded in its own way).
    /// An empty one is ignored.
    pub fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.is_empty() || self.secrets.contains(&secret) {
            return;
        }
        self.secrets.push(secret);
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every credential-bearing word redacted and every known
    /// secret replaced by `***` (one shorter than 4 characters only where it
    /// is a whole word).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..end];
            if word.contains("://") || word.contains('@') {
                out.push_str(&redact(word));
            } else {
                out.push_str(word);
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        for secret in &self.secrets {
            out = if secret.chars().count() >= SHORT_SECRET {
                out.replace(secret.as_str(), HIDDEN)
            } else {
                replace_whole_words(&out, secret)
            };
        }
        out
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrubber")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// `text` with each occurrence of `word` that is not part of a longer run of
/// letters and digits replaced by `***`.
fn replace_whole_words(text: &str, word: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in text.match_indices(word) {
        if at < last {
            continue;
        }
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(HIDDEN);
        last = at + word.len();
    }
    out.push_str(&text[last..]);
    out
}

/// A part of a string that the rule hides.
struct Hidden {
    range: Range<usize>,
    /// A whole user info whose user name could not be told apart (rule 2).
    user_info: bool,
}

/// `text` with its [`hidden_parts`] replaced by `***`.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for hidden in hidden_parts(text) {
        out.push_str(&text[last..hidden.range.start]);
        out.push_str(HIDDEN);
        last = hidden.range.end;
    }
    out.push_str(&text[last..]);
    out
}

/// The parts of `text` the rule of the module docs hides, in order, not
/// overlapping, none empty.
fn hidden_parts(text: &str) -> Vec<Hidden> {
    let mut parts = Vec::new();
    // Where the query may start: after the user info, whose password may
    // hold a `?`.
    let mut after_user_info = 0;
    if let Some(scheme_end) = text.find("://").map(|i| i + 3) {
        let rest = &text[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let at = rest[..authority_end].rfind('@').or_else(|| rest.rfind('@'));
        if let Some(at) = at {
            after_user_info = scheme_end + at;
            if let Some(colon) = rest[..at].find(':') {
                let range = scheme_end + colon + 1..scheme_end + at;
                if !range.is_empty() {
                    parts.push(Hidden {
                        range,
                        user_info: false,
                    });
                }
            }
        }
    } else if let Some(at) = text.rfind('@') {
        after_user_info = at;
        if at > 0 {
            parts.push(Hidden {
                range: 0..at,
                user_info: true,
            });
        }
    } else if let Some(colon) = text
        .find(':')
        .filter(|&colon| !in_credentials_setting(text, colon))
    {
        let after = &text[colon + 1..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let is_port = digits > 0
            && (digits == after.len() || after[digits..].starts_with(['/', '?', ',', ';']));
        if !is_port && !after.is_empty() {
            parts.push(Hidden {
                range: colon + 1..text.len(),
                user_info: false,
            });
            return parts;
        }
    }
    if let Some(query) = text[after_user_info..]
        .find('?')
        .map(|i| after_user_info + i + 1)
    {
        let end = text[query..].find('#').map_or(text.len(), |i| query + i);
        let mut start = query;
        for pair in text[query..end].split('&') {
            if let Some((name, value)) = pair.split_once('=') {
                let name = name.to_ascii_lowercase();
                if !value.is_empty() && SECRET_PARAMETERS.iter().any(|s| name.contains(s)) {
                    let value_start = start + pair.len() - value.len();
                    parts.push(Hidden {
                        range: value_start..start + pair.len(),
                        user_info: false,
                    });
                }
            }
            start += pair.len() + 1;
        }
    }
    settings_parts(text, parts)
}

/// Rule 4: adds to `parts` the credentials of a .NET ClientAPI connection
/// string's `DefaultUserCredentials=user:password` setting (the key in any
/// case, with or without spaces), then puts the parts in order, merging any
/// that overlap.
fn settings_parts(text: &str, mut parts: Vec<Hidden>) -> Vec<Hidden> {
    let mut start = 0;
    for setting in text.split(';') {
        if let Some((key, value)) = setting.split_once('=') {
            let key: String = key
                .chars()
                .filter(|c| !c.is_whitespace())
                .flat_map(char::to_lowercase)
                .collect();
            let dotted = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if key == "defaultusercredentials" {
                let value_start = start + key_len(setting, value);
                let secret = match value.find(':') {
                    Some(colon) => value_start + colon + 1..start + setting.trim_end().len(),
                    None => value_start..start + setting.trim_end().len(),
                };
                if !secret.is_empty() {
                    parts.push(Hidden {
                        range: secret,
                        user_info: false,
                    });
                }
            } else if dotted
                && SECRET_PARAMETERS.iter().any(|s| key.contains(s))
                && !value.trim().is_empty()
            {
                let value_start = start + key_len(setting, value);
                parts.push(Hidden {
                    range: value_start..start + setting.trim_end().len(),
                    user_info: false,
                });
            }
        }
        start += setting.len() + 1;
    }
    parts.sort_by_key(|p| p.range.start);
    let mut merged: Vec<Hidden> = Vec::with_capacity(parts.len());
    for part in parts {
        match merged.last_mut() {
            Some(last) if part.range.start <= last.range.end => {
                last.range.end = last.range.end.max(part.range.end);
                last.user_info |= part.user_info;
            }
            _ => merged.push(part),
        }
    }
    merged
}

/// Whether byte `at` of `text` lies in the value of a .NET
/// `DefaultUserCredentials` setting, whose password rule 4 hides (and
/// nothing after it: the settings behind it stay readable).
fn in_credentials_setting(text: &str, at: usize) -> bool {
    let start = text[..at].rfind(';').map_or(0, |i| i + 1);
    text[start..at].split_once('=').is_some_and(|(key, _)| {
        key.chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_lowercase)
            .eq("defaultusercredentials".chars())
    })
}

/// Where `value` (the text after the first `=` of `setting`) starts in it.
fn key_len(setting: &str, value: &str) -> usize {
    setting.len() - value.len()
}

/// `text` with its `%XX` escapes decoded (bytes that are not UTF-8 become
/// U+FFFD); a `%` that starts no escape is kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn librdkafka_secret_settings_are_hidden() {
        let kafka = "bootstrap.servers=k1:9092,k2:9092;sasl.username=u;sasl.password=pss;acks=all";
        assert_eq!(
            shown(kafka),
            "bootstrap.servers=k1:9092,k2:9092;sasl.username=u;sasl.password=***;acks=all"
        );
        assert_eq!(
            shown("bootstrap.servers=k:9092;ssl.key.password=pw"),
            "bootstrap.servers=k:9092;ssl.key.password=***"
        );
        assert_eq!(
            shown("bootstrap.servers=k:9092"),
            "bootstrap.servers=k:9092"
        );
    }

    #[test]
    fn dotnet_default_user_credentials_are_hidden() {
        let text = ConnectionString::from(
            "ConnectTo=tcp://admin:changeit@es1:1113; Default User Credentials = ops:s3cr3t ;HeartBeatTimeout=500",
        );
        assert_eq!(
            text.to_string(),
            "ConnectTo=tcp://admin:***@es1:1113; Default User Credentials = ops:*** ;HeartBeatTimeout=500"
        );
        let text =
            ConnectionString::from("ConnectTo=tcp://es1:1113;defaultusercredentials=opsonly");
        assert_eq!(
            text.to_string(),
            "ConnectTo=tcp://es1:1113;defaultusercredentials=***"
        );
        // Without a `ConnectTo` URL (cluster discovery), the settings after
        // the credentials stay readable.
        assert_eq!(
            shown("GossipSeeds=a:2113,b:2113; DefaultUserCredentials=ops:s3cr3t; NodePreference=Master"),
            "GossipSeeds=a:2113,b:2113; DefaultUserCredentials=ops:***; NodePreference=Master"
        );
        assert_eq!(
            shown("ClusterDns=es; DefaultUserCredentials=ops:s3:cr3t"),
            "ClusterDns=es; DefaultUserCredentials=ops:***"
        );
        let secrets = ConnectionString::from("DefaultUserCredentials=ops:s3cr3t").secrets();
        assert!(secrets.contains(&"s3cr3t".to_owned()), "{secrets:?}");
    }

    use super::*;

    fn shown(text: &str) -> String {
        ConnectionString::from(text).to_string()
    }

    #[test]
    fn passwords_are_redacted_and_nothing_else_changes() {
        for (raw, expected) in [
            (
                "esdb://admin:changeit@localhost:2113?tls=false",
                "esdb://admin:***@localhost:2113?tls=false",
            ),
            (
                "esdb://localhost:2113?tls=false",
                "esdb://localhost:2113?tls=false",
            ),
            (
                "esdb+discover://u:p@a:1,b:2/?x=y",
                "esdb+discover://u:***@a:1,b:2/?x=y",
            ),
            ("mongodb://u:p@m/x?a=b@c", "mongodb://u:***@m/x?a=b@c"),
            (
                "mongodb://admin:s3cret@db1:27017,db2/?authSource=admin",
                "mongodb://admin:***@db1:27017,db2/?authSource=admin",
            ),
            (
                "mongodb+srv://u:p%40ss@cluster.example/db",
                "mongodb+srv://u:***@cluster.example/db",
            ),
            ("mongodb://db1:27017", "mongodb://db1:27017"),
            ("mongodb://user@db1", "mongodb://user@db1"),
            (
                "http://hook:t0ken@h:8080/t?x=1",
                "http://hook:***@h:8080/t?x=1",
            ),
            ("https://h/t?apiKey=abc&x=1", "https://h/t?apiKey=***&x=1"),
            (
                "https://h/t?access_token=abc#f",
                "https://h/t?access_token=***#f",
            ),
            ("https://h/t?Password=&x=1", "https://h/t?Password=&x=1"),
            ("esdb://u:@h", "esdb://u:@h"),
            ("", ""),
            ("localhost", "localhost"),
            ("localhost:2113", "localhost:2113"),
            ("a:2113,b:2113/?tls=false", "a:2113,b:2113/?tls=false"),
        ] {
            assert_eq!(shown(raw), expected, "{raw}");
        }
    }

    #[test]
    fn odd_passwords_and_unparseable_strings_are_still_hidden() {
        for (raw, secret, expected) in [
            (
                "esdb://admin:p?ss@host:2113?tls=false",
                "p?ss",
                "esdb://admin:***@host:2113?tls=false",
            ),
            (
                "esdb://admin:pa/ss@host:2113",
                "pa/ss",
                "esdb://admin:***@host:2113",
            ),
            (
                "esdb://admin:p@ss@host:2113",
                "p@ss",
                "esdb://admin:***@host:2113",
            ),
            (
                "esdb://admin:p#ss@host:2113",
                "p#ss",
                "esdb://admin:***@host:2113",
            ),
            ("esdb://h:2113/?x=a@b", "2113", "esdb://h:***@b"),
            (
                "mongodb://u:a/b?c@d@h/db?w=1",
                "a/b?c@d",
                "mongodb://u:***@h/db?w=1",
            ),
            ("admin:secret@host:2113", "secret", "***@host:2113"),
            ("esdb:/admin:secret@host", "secret", "***@host"),
            ("admin:hunter2-secret", "hunter2", "admin:***"),
            ("garbage:hunter2", "hunter2", "garbage:***"),
            ("host:12ab", "12ab", "host:***"),
            ("token@host", "token", "***@host"),
        ] {
            let text = shown(raw);
            assert_eq!(text, expected, "{raw}");
            assert!(!text.contains(secret), "{raw} → {text}");
        }
    }

    #[test]
    fn debug_is_the_redacted_string() {
        let s = ConnectionString::from("esdb://a:b-pass@h");
        assert_eq!(format!("{s:?}"), "\"esdb://a:***@h\"");
        assert_eq!(s.expose(), "esdb://a:b-pass@h");
        assert_eq!("x".parse::<ConnectionString>().unwrap().expose(), "x");
    }

    #[test]
    fn secrets_are_the_hidden_parts_as_written_and_decoded() {
        let secrets = |s: &str| ConnectionString::from(s).secrets();
        assert_eq!(secrets("mongodb://u:p%40ss@h/"), vec!["p%40ss", "p@ss"]);
        assert_eq!(secrets("mongodb://u:pass@h"), vec!["pass"]);
        assert!(secrets("mongodb://u@h").is_empty());
        assert!(secrets("mongodb://h:27017").is_empty());
        assert_eq!(secrets("admin:pw-1@h"), vec!["admin:pw-1", "pw-1"]);
        assert_eq!(secrets("http://h/?token=a%2Fb"), vec!["a%2Fb", "a/b"]);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("p%41ss%2fw0rd"), "pAss/w0rd");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("p12"), "p12");
        assert_eq!(
            percent_decode("a%4"),
            "a%4",
            "an escape cut short at the end"
        );
        assert_eq!(percent_decode("ab%"), "ab%");
        assert_eq!(percent_decode("%zz1"), "%zz1");
    }

    #[test]
    fn scrubbing_hides_known_secrets_and_credential_bearing_words() {
        let mongo = ConnectionString::from("mongodb://u:p%40ssw0rd@db:27017");
        let esdb = ConnectionString::from("esdb://admin:s3cr3t-pw@source:2113");
        let scrubber = Scrubber::of([&mongo, &esdb]);
        let message =
            "auth failed for u with p@ssw0rd (p%40ssw0rd) at mongodb://u:p%40ssw0rd@db:27017, \
                       s3cr3t-pw rejected; also `http://x:other-token@h/` and y:zz@host";
        let scrubbed = scrubber.scrub(message);
        for secret in ["p@ssw0rd", "p%40ssw0rd", "s3cr3t-pw", "other-token", "zz@"] {
            assert!(!scrubbed.contains(secret), "{secret}: {scrubbed}");
        }
        assert!(scrubbed.contains("mongodb://u:***@db:27017,"), "{scrubbed}");
        assert!(scrubbed.contains("`http://x:***@h/`"), "{scrubbed}");
        assert_eq!(
            Scrubber::default().scrub("  plain  text\n"),
            "  plain  text\n"
        );
    }

    #[test]
    fn short_secrets_are_hidden_as_whole_words_only() {
        let scrubber = Scrubber::of([&ConnectionString::from("esdb://u:ab@h")]);
        assert_eq!(scrubber.scrub("ab: about cab ab"), "***: about cab ***");
        assert_eq!(format!("{scrubber:?}"), "Scrubber { secrets: 1 }");
    }
}
