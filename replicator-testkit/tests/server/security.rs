//! TLS with a private CA and basic authentication, through the real `eventstore`
//! client. In-process only: the server is started with a certificate made here
//! and with its own users (see `replicator_testkit::security`).

use eventstore::{
    AppendToStreamOptions, BatchAppendOptions, Client, Error, ExpectedRevision, ReadAllOptions,
    ReadStreamOptions,
};
use replicator_testkit::security::{TestCertificates, User};
use replicator_testkit::support;
use replicator_testkit::{EsdbServer, ServerOptions};

use crate::common::json_event;

struct Secure {
    server: EsdbServer,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn secure_server() -> Secure {
    let certificates = TestCertificates::generate(&[]).expect("certificates");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = certificates.write_ca(dir.path()).expect("CA file");
    let server = EsdbServer::start_with(ServerOptions {
        tls: Some(certificates),
        users: Some(vec![User::admin(), User::new("reader", "secret")]),
        ..ServerOptions::default()
    })
    .await
    .expect("server");
    Secure {
        server,
        ca_file,
        _dir: dir,
    }
}

impl Secure {
    fn client(&self, credentials: Option<(&str, &str)>) -> Client {
        let url = self
            .server
            .connection_string_with(credentials, Some(&self.ca_file));
        support::client(&url)
    }
}

async fn append(client: &Client, stream: &str) -> Result<(), Error> {
    client
        .append_to_stream(
            stream,
            &AppendToStreamOptions::default(),
            vec![json_event("E", 0)],
        )
        .await
        .map(|_| ())
}

async fn read_all(client: &Client) -> Result<usize, Error> {
    let mut read = client
        .read_all(&ReadAllOptions::default().max_count(100))
        .await?;
    let mut n = 0;
    while read.next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

async fn read_stream(client: &Client, stream: &str) -> Result<usize, Error> {
    let mut read = client
        .read_stream(stream, &ReadStreamOptions::default())
        .await?;
    let mut n = 0;
    while read.next().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn tls_with_a_private_ca_and_the_default_admin_can_do_everything() {
    let secure = secure_server().await;
    assert!(secure.server.connection_string().contains("tls=true"));
    let admin = secure.client(Some(("admin", "changeit")));
    append(&admin, "orders-1").await.expect("append over TLS");
    append(&admin, "$system-ish")
        .await
        .expect("admins write $-streams");
    assert_eq!(read_all(&admin).await.expect("admins read $all"), 2);
    assert_eq!(read_stream(&admin, "orders-1").await.expect("read"), 1);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let secure = secure_server().await;
    // No tlsCaFile: the platform's roots, which do not hold the private CA.
    let url = secure
        .server
        .connection_string_with(Some(("admin", "changeit")), None);
    let client = support::client(&url);
    let error = tokio::time::timeout(std::time::Duration::from_secs(30), append(&client, "s"))
        .await
        .expect("the client gives up")
        .expect_err("an untrusted certificate must not be accepted");
    assert!(
        matches!(
            error,
            Error::GrpcConnectionError(_) | Error::ConnectionClosed | Error::ServerError(_)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_refused_on_every_call() {
    let secure = secure_server().await;
    let client = secure.client(Some(("admin", "wrong")));
    // The server answers `Unauthenticated`, which this client reports as
    // `AccessDenied`.
    assert!(matches!(
        append(&client, "s").await,
        Err(Error::AccessDenied)
    ));
    assert!(matches!(read_all(&client).await, Err(Error::AccessDenied)));
    let unknown = secure.client(Some(("nobody", "changeit")));
    assert!(matches!(
        read_stream(&unknown, "s").await,
        Err(Error::AccessDenied)
    ));
}

#[tokio::test]
async fn an_ordinary_user_keeps_to_user_streams() {
    let secure = secure_server().await;
    let reader = secure.client(Some(("reader", "secret")));
    append(&reader, "orders-1")
        .await
        .expect("user streams are open to users");
    assert_eq!(read_stream(&reader, "orders-1").await.expect("read"), 1);
    assert!(matches!(read_all(&reader).await, Err(Error::AccessDenied)));
    assert!(matches!(
        append(&reader, "$secret").await,
        Err(Error::AccessDenied)
    ));
    assert!(matches!(
        read_stream(&reader, "$secret").await,
        Err(Error::AccessDenied)
    ));
    let subscription_error = {
        let mut subscription = reader
            .subscribe_to_all(&eventstore::SubscribeToAllOptions::default())
            .await;
        tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription gives up")
    };
    assert!(
        matches!(subscription_error, Err(Error::AccessDenied)),
        "{subscription_error:?}"
    );
    // A batch append to a `$`-stream is refused with the batch's error.
    let batch = reader
        .batch_append(&BatchAppendOptions::default())
        .await
        .expect("batch client");
    let error = batch
        .append_to_stream("$secret", ExpectedRevision::Any, vec![json_event("E", 1)])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &error,
            Error::Grpc { code: tonic::Code::PermissionDenied, message } if message == "AccessDenied"
        ),
        "{error:?}"
    );
    // Without credentials nothing is allowed.
    let anonymous = secure.client(None);
    assert!(matches!(
        read_stream(&anonymous, "orders-1").await,
        Err(Error::AccessDenied)
    ));
}

/// A read of `stream` with `authorization: Bearer <token>`, on a raw gRPC
/// channel (the `eventstore` client sends only Basic credentials): the status
/// code of the call, `Ok` when the read was served.
async fn read_with_token(server: &EsdbServer, token: &str, stream: &str) -> tonic::Code {
    use replicator_testkit::proto::shared::StreamIdentifier;
    use replicator_testkit::proto::streams::read_req::options::{
        self, stream_options::RevisionOption, CountOption, StreamOption,
    };
    use replicator_testkit::proto::streams::{read_req, streams_client::StreamsClient, ReadReq};

    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.port()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
    let mut request = tonic::Request::new(ReadReq {
        options: Some(read_req::Options {
            stream_option: Some(StreamOption::Stream(options::StreamOptions {
                stream_identifier: Some(StreamIdentifier {
                    stream_name: stream.as_bytes().to_vec().into(),
                }),
                revision_option: Some(RevisionOption::Start(())),
            })),
            read_direction: options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(CountOption::Count(10)),
            filter_option: Some(options::FilterOption::NoFilter(())),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::String(())),
            }),
            control_option: Some(options::ControlOption { compatibility: 1 }),
        }),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match StreamsClient::new(channel).read(request).await {
        Err(status) => status.code(),
        Ok(replies) => {
            let mut replies = replies.into_inner();
            loop {
                match replies.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return tonic::Code::Ok,
                    Err(status) => return status.code(),
                }
            }
        }
    }
}

#[tokio::test]
async fn bearer_tokens_are_checked_as_the_server_checks_them_and_can_be_revoked() {
    use replicator_testkit::security::BearerTokens;

    let tokens = BearerTokens::new();
    tokens
        .accept("admin-token", User::admin())
        .accept("ops-token", User::new("ops", ""));
    let server = EsdbServer::start_with(ServerOptions {
        users: Some(vec![User::admin()]),
        bearer_tokens: Some(tokens.clone()),
        ..ServerOptions::default()
    })
    .await
    .expect("server");

    assert_eq!(
        read_with_token(&server, "admin-token", "$secrets").await,
        tonic::Code::Ok
    );
    assert_eq!(
        read_with_token(&server, "ops-token", "orders").await,
        tonic::Code::Ok
    );
    assert_eq!(
        read_with_token(&server, "ops-token", "$secrets").await,
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        read_with_token(&server, "never-issued", "orders").await,
        tonic::Code::Unauthenticated
    );
    // Revoked mid-run, as an expired token: refused from the next call on.
    tokens.revoke("ops-token");
    assert_eq!(
        read_with_token(&server, "ops-token", "orders").await,
        tonic::Code::Unauthenticated
    );
    // Basic credentials work beside the tokens.
    let client = support::client(&format!(
        "esdb://admin:changeit@127.0.0.1:{}?tls=false",
        server.port()
    ));
    client
        .append_to_stream(
            "orders",
            &AppendToStreamOptions::default(),
            json_event("Placed", 1),
        )
        .await
        .expect("basic credentials still accepted");
}
