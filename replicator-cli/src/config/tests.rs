use super::*;

const GOOD: &str = r#"
replicator:
  reader:
    connectionString: "esdb://admin:changeit@source:2113?tls=false"
    protocol: "grpc"
    pageSize: 2048
  sink:
    connectionString: "esdb://target:2113?tls=false"
    partitionCount: 10
    protocol: grpc
    bufferSize: 500
  scavenge: false
  filters: []
  transform: null
  runContinuously: false
  restartOnFailure: false
  restartDelayInSeconds: 7
  reportMetricsFrequencyInSeconds: 3
  callTimeoutInSeconds: 15
  http:
    listen: "127.0.0.1:9000"
    unhealthyAfterSeconds: 30
  checkpoint:
    type: file
    path: "/data/checkpoint"
    checkpointAfter: 1
    checkpointIntervalInSeconds: 30
    seeder:
      type: chaser
      path: /backup/chaser.chk
"#;

const MINIMAL: &str = "
replicator:
  reader:
    connectionString: esdb://source:2113
  sink:
    connectionString: esdb://target:2113
";

fn load_env(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml(
        yaml,
        Path::new("test.yaml"),
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    )
}

fn load(yaml: &str) -> Result<Config, ConfigError> {
    load_env(yaml, &[])
}

/// The error's key path and full message.
fn key_err(yaml: &str) -> (String, String) {
    match load(yaml) {
        Err(e @ ConfigError::Key { .. }) => {
            let ConfigError::Key { ref key, .. } = e else {
                unreachable!()
            };
            (key.clone(), e.to_string())
        }
        other => panic!("expected a key error, got {other:?}"),
    }
}

fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

#[test]
fn reads_every_supported_key() {
    let c = load(GOOD).unwrap();
    assert_eq!(
        c.reader.connection_string,
        "esdb://admin:changeit@source:2113?tls=false"
    );
    assert_eq!(c.reader.page_size.get(), 2048);
    assert_eq!(c.sink.connection_string, "esdb://target:2113?tls=false");
    assert_eq!(c.sink.partition_count(), 10);
    assert_eq!(c.sink.buffer_size.get(), 500);
    assert!(!c.run_continuously);
    assert!(!c.restart_on_failure);
    assert_eq!(c.restart_delay, Duration::from_secs(7));
    assert_eq!(c.report_every, Duration::from_secs(3));
    assert_eq!(c.call_timeout, Duration::from_secs(15));
    assert_eq!(
        c.http,
        HttpConfig {
            listen: Some("127.0.0.1:9000".into()),
            unhealthy_after: Duration::from_secs(30),
        }
    );
    assert_eq!(
        c.checkpoint,
        CheckpointConfig {
            store: StoreConfig::File {
                path: "/data/checkpoint".into()
            },
            checkpoint_after: 1,
            checkpoint_interval: Duration::from_secs(30),
            seeder: Some(SeederConfig::Chaser {
                path: "/backup/chaser.chk".into()
            }),
        }
    );
}

#[test]
fn defaults_match_the_csharp_tool() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.reader.page_size.get(), 1024);
    assert_eq!(c.sink.partition_count, None);
    assert_eq!(c.sink.partition_count(), DEFAULT_PARTITION_COUNT);
    assert_eq!(c.sink.buffer_size.get(), 1000);
    assert!(c.run_continuously);
    assert!(c.restart_on_failure);
    assert_eq!(c.restart_delay, Duration::from_secs(5));
    assert_eq!(c.report_every, Duration::from_secs(5));
    assert_eq!(c.call_timeout, Duration::from_secs(20));
    assert_eq!(c.http.listen.as_deref(), Some("0.0.0.0:5000"));
    assert_eq!(c.http.unhealthy_after, Duration::from_secs(10));
    assert_eq!(
        c.checkpoint,
        CheckpointConfig {
            store: StoreConfig::File {
                path: "./checkpoint".into()
            },
            checkpoint_after: 1000,
            checkpoint_interval: Duration::from_secs(1),
            seeder: None,
        }
    );
}

#[test]
fn mongo_store_with_defaults_and_explicit_settings() {
    let c = load(&with(
        "  checkpoint:\n    type: mongo\n    path: mongodb://u:p@mongo:27017\n",
    ))
    .unwrap();
    assert_eq!(
        c.checkpoint.store,
        StoreConfig::Mongo {
            connection_string: "mongodb://u:p@mongo:27017".into(),
            database: "replicator".into(),
            instance_id: "default".into(),
        }
    );
    let c = load(&with(
        "  checkpoint:\n    type: mongo\n    path: mongodb://mongo\n    database: other\n    instanceId: two\n",
    ))
    .unwrap();
    assert_eq!(
        c.checkpoint.store,
        StoreConfig::Mongo {
            connection_string: "mongodb://mongo".into(),
            database: "other".into(),
            instance_id: "two".into(),
        }
    );
}

#[test]
fn mongo_needs_a_connection_string() {
    let (key, msg) = key_err(&with("  checkpoint:\n    type: mongo\n"));
    assert_eq!(key, "replicator.checkpoint.path");
    assert!(msg.contains("MongoDB connection string"), "{msg}");
    let (key, _) = key_err(&with(
        "  checkpoint:\n    type: mongo\n    path: ./checkpoint\n",
    ));
    assert_eq!(key, "replicator.checkpoint.path");
}

#[test]
fn mongo_only_keys_are_rejected_for_the_file_store() {
    let (key, msg) = key_err(&with("  checkpoint:\n    database: x\n"));
    assert_eq!(key, "replicator.checkpoint.database");
    assert!(msg.contains("mongo"), "{msg}");
}

#[test]
fn the_stream_store_is_kept_in_the_target() {
    let c = load(&with("  checkpoint:\n    type: stream\n")).unwrap();
    assert_eq!(
        c.checkpoint.store,
        StoreConfig::Stream {
            token: None,
            connection_string: c.sink.connection_string.clone(),
            instance_id: "default".into(),
        }
    );
    // The target's connection string, as an environment variable sets it.
    let c = load_env(
        &with("  checkpoint:\n    type: Stream\n    instanceId: blue\n"),
        &[(
            "REPLICATOR_SINK_CONNECTIONSTRING",
            "esdb://admin:pw@elsewhere:2113",
        )],
    )
    .unwrap();
    assert_eq!(
        c.checkpoint.store,
        StoreConfig::Stream {
            token: None,
            connection_string: "esdb://admin:pw@elsewhere:2113".into(),
            instance_id: "blue".into(),
        }
    );
    let shown = c.checkpoint.store.to_string();
    assert!(shown.contains("$replicator-checkpoint-blue"), "{shown}");
    assert!(!shown.contains("pw@"), "{shown}");
}

#[test]
fn the_stream_store_takes_no_path_nor_database() {
    let (key, msg) = key_err(&with(
        "  checkpoint:\n    type: stream\n    path: ./checkpoint\n",
    ));
    assert_eq!(key, "replicator.checkpoint.path");
    assert!(msg.contains("sink.connectionString"), "{msg}");
    let (key, _) = key_err(&with("  checkpoint:\n    type: stream\n    database: x\n"));
    assert_eq!(key, "replicator.checkpoint.database");
    let (key, _) = key_err(&with(
        "  checkpoint:\n    type: stream\n    instanceId: ' '\n",
    ));
    assert_eq!(key, "replicator.checkpoint.instanceId");
    let (key, msg) = key_err(&with("  checkpoint:\n    type: volume\n"));
    assert_eq!(key, "replicator.checkpoint.type");
    assert!(msg.contains("file, mongo or stream"), "{msg}");
}

#[test]
fn keys_match_case_insensitively_like_dotnet() {
    let c = load(
        "Replicator:\n  Reader:\n    ConnectionString: esdb://a\n  SINK:\n    connectionstring: esdb://b\n    PartitionCount: 3\n",
    )
    .unwrap();
    assert_eq!(c.reader.connection_string, "esdb://a");
    assert_eq!(c.sink.partition_count(), 3);
}

#[test]
fn the_same_key_in_two_spellings_is_an_error() {
    let (key, _) = key_err(&with("  RunContinuously: true\n  runContinuously: false\n"));
    assert_eq!(key, "replicator.runContinuously");
}

#[test]
fn quoted_numbers_and_booleans_are_accepted() {
    let c = load(&with(
        "  runContinuously: \"False\"\n  checkpoint:\n    checkpointAfter: \"10\"\n",
    ))
    .unwrap();
    assert!(!c.run_continuously);
    assert_eq!(c.checkpoint.checkpoint_after, 10);
}

#[test]
fn a_tcp_source_takes_the_scavenge_filter() {
    let c = load(
        "replicator:\n  reader:\n    connectionString: ConnectTo=tcp://a:1113\n    protocol: tcp\n  sink:\n    connectionString: esdb://b\n  scavenge: true\n",
    )
    .unwrap();
    assert!(c.scavenge);
    assert_eq!(c.reader.protocol, ReaderProtocol::Tcp);
}

#[test]
fn each_unsupported_key_is_an_error_naming_it() {
    let cases = [
        ("  reader:\n    connectionString: esdb://a\n    protocol: udp\n  sink:\n    connectionString: esdb://b\n",
         "replicator.reader.protocol", "udp"),
        ("  reader:\n    connectionString: ConnectTo=tcp://a:1113\n    protocol: tcp\n    pageSize: 5000\n  sink:\n    connectionString: esdb://b\n",
         "replicator.reader.pageSize", "4096"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    protocol: amqp\n",
         "replicator.sink.protocol", "amqp"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    protocol: kafka\n",
         "replicator.sink.connectionString", "key=value"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: bootstrap.servers=k:9092\n    protocol: kafka\n    order: stream\n",
         "replicator.sink.order", "kafka"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: bootstrap.servers=k:9092\n    protocol: kafka\n    deletes: purge\n",
         "replicator.sink.deletes", "tombstone"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: bootstrap.servers=k:9092\n    protocol: kafka\n  checkpoint:\n    type: stream\n",
         "replicator.checkpoint.type", "kafka"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    router: r.js\n",
         "replicator.sink.router", "kafka"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    protocol: tcp\n",
         "replicator.sink.protocol", "tcp"),
        ("  reader:\n    connectionString: esdb://a\n    auth:\n      type: oauthClientCredentials\n  sink:\n    connectionString: esdb://b\n",
         "replicator.reader.auth", "credentials"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    type: python\n",
         "replicator.transform.type", "python"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    type: http\n",
         "replicator.transform.config", "URL"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  transform:\n    config: x\n",
         "replicator.transform.config", "js transform"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  checkpoint:\n    type: redis\n",
         "replicator.checkpoint.type", "redis"),
        ("  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n  checkpoint:\n    seeder:\n      type: file\n",
         "replicator.checkpoint.seeder.type", "file"),
    ];
    for (body, want_key, want_word) in cases {
        let (key, msg) = key_err(&format!("replicator:\n{body}"));
        assert_eq!(key, want_key, "for:\n{body}");
        assert!(msg.contains(want_key), "{msg}");
        assert!(msg.contains(want_word), "{msg} should mention {want_word}");
    }
}

#[test]
fn the_default_transform_and_empty_unsupported_keys_are_accepted() {
    // As the C# Helm chart writes them.
    let c = load(&with(
        "  scavenge: false\n  filters: []\n  transform:\n    type: default\n",
    ));
    assert!(c.is_ok(), "{c:?}");
    let c = load(
        "replicator:\n  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    partitioner:\n  transform: null\n",
    );
    assert!(c.is_ok(), "{c:?}");
}

#[test]
fn unknown_keys_are_errors_naming_the_full_path() {
    let (key, msg) = key_err(
        &with("  sink:\n    connectionString: esdb://b\n    foo: 1\n")
            .replace("  sink:\n    connectionString: esdb://target:2113\n", ""),
    );
    assert_eq!(key, "replicator.sink.foo");
    assert!(msg.contains("foo"), "{msg}");

    let (key, _) = key_err(&with("  checkpoint:\n    seeder:\n      kind: chaser\n"));
    assert_eq!(key, "replicator.checkpoint.seeder.kind");

    let (key, _) = key_err(&with("  bogus: true\n"));
    assert_eq!(key, "replicator.bogus");

    let (key, _) = key_err(&format!("{MINIMAL}Logging:\n  level: info\n"));
    assert_eq!(key, "Logging");
}

#[test]
fn missing_required_keys_are_named() {
    let (key, msg) = key_err("replicator:\n  sink:\n    connectionString: esdb://b\n");
    assert_eq!(key, "replicator.reader.connectionString");
    assert!(msg.contains("required"), "{msg}");
    let (key, _) = key_err(
        "replicator:\n  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString:\n",
    );
    assert_eq!(key, "replicator.sink.connectionString");
    let (key, _) = key_err("other: 1\n");
    assert_eq!(key, "other");
    let (key, _) = key_err("");
    assert_eq!(key, "replicator");
}

#[test]
fn bad_values_are_named() {
    let (key, msg) = key_err(&with("  checkpoint:\n    checkpointAfter: 0\n"));
    assert_eq!(key, "replicator.checkpoint.checkpointAfter");
    let (key, _) = key_err(&with("  checkpoint:\n    checkpointIntervalInSeconds: 0\n"));
    assert_eq!(key, "replicator.checkpoint.checkpointIntervalInSeconds");
    assert!(msg.contains("at least 1"), "{msg}");
    let (key, _) = key_err(&with("  runContinuously: maybe\n"));
    assert_eq!(key, "replicator.runContinuously");
    let (key, _) = key_err(&with("  restartDelayInSeconds: -1\n"));
    assert_eq!(key, "replicator.restartDelayInSeconds");
    let (key, _) = key_err(&with("  checkpoint: ./checkpoint\n"));
    assert_eq!(key, "replicator.checkpoint");
    let (key, msg) = key_err(&with("  checkpoint:\n    seeder:\n      type: chaser\n"));
    assert_eq!(key, "replicator.checkpoint.seeder.path");
    assert!(msg.contains("chaser.chk"), "{msg}");
}

#[test]
fn the_status_server_is_configured_by_http_keys_and_the_environment() {
    let c = load(&with("  HTTP:\n    Listen: \"[::1]:0\"\n")).unwrap();
    assert_eq!(c.http.listen.as_deref(), Some("[::1]:0"));
    let c = load(&with("  http:\n    listen: \"\"\n")).unwrap();
    assert_eq!(c.http.listen, None, "an empty string turns the server off");
    let c = load_env(
        MINIMAL,
        &[
            ("REPLICATOR_HTTP_LISTEN", "127.0.0.1:9000"),
            ("REPLICATOR_HTTP_UNHEALTHYAFTERSECONDS", "3"),
            ("REPLICATOR_CALLTIMEOUTINSECONDS", "7"),
        ],
    )
    .unwrap();
    assert_eq!(c.http.listen.as_deref(), Some("127.0.0.1:9000"));
    assert_eq!(c.http.unhealthy_after, Duration::from_secs(3));
    assert_eq!(c.call_timeout, Duration::from_secs(7));
    let c = load_env(MINIMAL, &[("REPLICATOR_HTTP_LISTEN", "")]).unwrap();
    assert_eq!(c.http.listen, None);
}

#[test]
fn bad_status_server_settings_are_named() {
    for listen in [
        "5000",
        "localhost",
        "http://0.0.0.0:5000",
        "0.0.0.0:http",
        ":5000",
    ] {
        let (key, msg) = key_err(&with(&format!("  http:\n    listen: \"{listen}\"\n")));
        assert_eq!(key, "replicator.http.listen", "{listen}");
        assert!(msg.contains("host:port"), "{msg}");
    }
    let (key, _) = key_err(&with("  http:\n    unhealthyAfterSeconds: soon\n"));
    assert_eq!(key, "replicator.http.unhealthyAfterSeconds");
    let (key, msg) = key_err(&with("  callTimeoutInSeconds: 0\n"));
    assert_eq!(key, "replicator.callTimeoutInSeconds");
    assert!(msg.contains("at least 1"), "{msg}");
    let err = load_env(MINIMAL, &[("REPLICATOR_HTTP_LISTEN", "nowhere")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("replicator.http.listen"), "{msg}");
    assert!(msg.contains("REPLICATOR_HTTP_LISTEN"), "{msg}");
}

#[test]
fn bad_yaml_names_the_file_and_line() {
    let err = load("replicator:\n  reader: [unclosed\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Yaml { .. }), "{err:?}");
    assert!(msg.contains("test.yaml"), "{msg}");
    assert!(
        msg.contains("line 2") || msg.contains(":2:") || msg.contains("2:"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/appsettings.yaml")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/appsettings.yaml"),
        "{err}"
    );
}

#[test]
fn environment_overrides_keys_case_insensitively() {
    let c = load_env(
        MINIMAL,
        &[
            ("REPLICATOR_SINK_PARTITIONCOUNT", "4"),
            ("REPLICATOR_READER_CONNECTIONSTRING", "esdb://other:2113"),
            ("REPLICATOR__CHECKPOINT__CHECKPOINTAFTER", "25"),
            ("REPLICATOR_CHECKPOINT_CHECKPOINTINTERVALINSECONDS", "600"),
            ("replicator_runcontinuously", "false"),
            ("REPLICATOR_CHECKPOINT_SEEDER_TYPE", "chaser"),
            ("REPLICATOR_CHECKPOINT_SEEDER_PATH", "/b/chaser.chk"),
            ("PATH", "/usr/bin"),
        ],
    )
    .unwrap();
    assert_eq!(c.sink.partition_count(), 4);
    assert_eq!(c.reader.connection_string, "esdb://other:2113");
    assert_eq!(c.checkpoint.checkpoint_after, 25);
    assert_eq!(c.checkpoint.checkpoint_interval, Duration::from_secs(600));
    assert!(!c.run_continuously);
    assert_eq!(
        c.checkpoint.seeder,
        Some(SeederConfig::Chaser {
            path: "/b/chaser.chk".into()
        })
    );
}

#[test]
fn environment_can_supply_required_keys() {
    let c = load_env(
        "replicator: {}\n",
        &[
            ("REPLICATOR_READER_CONNECTIONSTRING", "esdb://a"),
            ("REPLICATOR_SINK_CONNECTIONSTRING", "esdb://b"),
        ],
    )
    .unwrap();
    assert_eq!(c.sink.connection_string, "esdb://b");
}

#[test]
fn environment_errors_name_the_variable() {
    for (var, value, word) in [
        ("REPLICATOR_SINK_FOO", "1", "replicator.sink has no key"),
        ("REPLICATOR_SINK_PARTITIONCOUNT", "many", "whole number"),
        ("REPLICATOR_SINK", "x", "section"),
        ("REPLICATOR_FILTERS_X_TYPE", "eventType", "index"),
        ("REPLICATOR_FILTERS", "x", "entries"),
        ("REPLICATOR_FILTERS_0_COLOR", "x", "known keys"),
        ("REPLICATOR_", "x", "no configuration key"),
    ] {
        let err = load_env(MINIMAL, &[(var, value)]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Env { .. }), "{err:?}");
        assert!(msg.contains(var), "{msg}");
        assert!(msg.contains(word), "{msg} should mention {word}");
    }
}

#[test]
fn an_unsupported_value_from_the_environment_names_the_variable() {
    let err = load_env(MINIMAL, &[("REPLICATOR_SINK_PROTOCOL", "amqp")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("replicator.sink.protocol"), "{msg}");
    assert!(msg.contains("REPLICATOR_SINK_PROTOCOL"), "{msg}");
}

#[test]
fn passwords_are_hidden_in_the_debug_output() {
    let c = load(GOOD).unwrap();
    assert!(!format!("{c:?}").contains("changeit"));
}

#[test]
fn the_schema_lists_every_key_the_structs_accept() {
    // Every schema leaf set at once deserializes: the schema and the raw
    // structs agree (deny_unknown_fields would reject a schema-only key).
    fn fill(node: Node) -> Value {
        match node {
            Node::Str => Value::from("x"),
            Node::Int => Value::from(1),
            Node::Bool => Value::from(false),
            Node::Any => Value::Null,
            Node::Map(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, n)| ((*k).to_owned(), fill(*n)))
                    .collect(),
            ),
            Node::List(fields) => Value::Array(vec![fill(Node::Map(fields))]),
        }
    }
    let tree = fill(SCHEMA);
    let root: Result<raw::Root, _> = serde_path_to_error::deserialize(tree);
    assert!(
        root.is_ok(),
        "{:?}",
        root.err().map(|e| e.path().to_string())
    );
}

const FILTERS: &str = r#"
  filters:
    - type: eventType
      include: "^Order(?!Test)"
    - type: StreamName
      exclude: '^(\w+)-\1$'
    - type: streamName
      include: ""
"#;

#[test]
fn filters_are_read_in_order_with_dotnet_patterns() {
    let c = load(&with(FILTERS)).unwrap();
    assert_eq!(
        c.filters,
        vec![
            FilterConfig {
                kind: FilterKind::EventType,
                include: Some("^Order(?!Test)".into()),
                exclude: None,
            },
            FilterConfig {
                kind: FilterKind::StreamName,
                include: None,
                exclude: Some(r"^(\w+)-\1$".into()),
            },
            FilterConfig {
                kind: FilterKind::StreamName,
                include: None,
                exclude: None,
            },
        ]
    );
    assert!(!c.scavenge);
    assert_eq!(c.transform, TransformConfig::default());
}

#[test]
fn a_bad_filter_names_the_key_the_pattern_and_the_regex_error() {
    let (key, msg) = key_err(&with(
        "  filters:\n    - type: eventType\n      include: Order\n    - type: streamName\n      include: '^(orders'\n",
    ));
    assert_eq!(key, "replicator.filters[1].include");
    assert!(msg.contains("\"^(orders\""), "{msg}");
    assert!(
        msg.to_lowercase().contains("paren"),
        "the regex error: {msg}"
    );
    let (key, msg) = key_err(&with(
        "  filters:\n    - type: category\n      include: x\n",
    ));
    assert_eq!(key, "replicator.filters[0].type");
    assert!(msg.contains("category"), "{msg}");
    let (key, _) = key_err(&with("  filters:\n    - include: x\n"));
    assert_eq!(key, "replicator.filters[0].type");
    let (key, _) = key_err(&with(
        "  filters:\n    - type: eventType\n      includes: x\n",
    ));
    assert_eq!(key, "replicator.filters[0].includes");
    let (key, _) = key_err(&with("  filters:\n    type: eventType\n"));
    assert_eq!(key, "replicator.filters");
}

#[test]
fn filters_scavenge_and_transforms_from_the_environment() {
    let c = load_env(
        MINIMAL,
        &[
            ("REPLICATOR_FILTERS_0_TYPE", "streamName"),
            ("REPLICATOR_FILTERS_0_INCLUDE", "^orders"),
            ("REPLICATOR__FILTERS__1__TYPE", "eventType"),
            ("REPLICATOR__FILTERS__1__EXCLUDE", "Test$"),
            ("REPLICATOR_SCAVENGE", "true"),
            ("REPLICATOR_TRANSFORM_TYPE", "http"),
            ("REPLICATOR_TRANSFORM_CONFIG", "http://localhost:8080/t"),
            ("REPLICATOR_TRANSFORM_BUFFERSIZE", "4"),
            ("REPLICATOR_SINK_PARTITIONER", "/etc/p.js"),
        ],
    )
    .unwrap();
    assert_eq!(c.filters.len(), 2);
    assert_eq!(c.filters[0].include.as_deref(), Some("^orders"));
    assert_eq!(c.filters[1].exclude.as_deref(), Some("Test$"));
    assert!(c.scavenge);
    assert_eq!(
        c.transform,
        TransformConfig::Http {
            url: "http://localhost:8080/t".into(),
            in_flight: NonZeroUsize::new(4).unwrap(),
        }
    );
    assert_eq!(c.sink.partitioner, Some(PathBuf::from("/etc/p.js")));
    let err = load_env(
        MINIMAL,
        &[
            ("REPLICATOR_FILTERS_0_TYPE", "eventType"),
            ("REPLICATOR_FILTERS_0_INCLUDE", "("),
        ],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("replicator.filters[0].include"), "{msg}");
    assert!(msg.contains("REPLICATOR_FILTERS_0_INCLUDE"), "{msg}");
}

#[test]
fn transforms_in_the_csharp_form() {
    let c = load(&with(
        "  transform:\n    type: js\n    config: ./t.js\n    bufferSize: 3\n",
    ))
    .unwrap();
    assert_eq!(
        c.transform,
        TransformConfig::Js {
            path: "./t.js".into(),
            in_flight: NonZeroUsize::new(3).unwrap(),
        }
    );
    let c = load(&with(
        "  transform:\n    type: default\n    originalMetadata: true\n",
    ))
    .unwrap();
    assert_eq!(
        c.transform,
        TransformConfig::Default {
            original_metadata: true
        }
    );
    let (key, _) = key_err(&with(
        "  transform:\n    type: js\n    config: t.js\n    originalMetadata: true\n",
    ));
    assert_eq!(key, "replicator.transform.originalMetadata");
    let (key, msg) = key_err(&with("  transform:\n    type: http\n    config: ftp://x\n"));
    assert_eq!(key, "replicator.transform.config");
    assert!(msg.contains("ftp://x"), "{msg}");
    let (key, _) = key_err(&with(
        "  transform:\n    type: js\n    config: t.js\n    bufferSize: 0\n",
    ));
    assert_eq!(key, "replicator.transform.bufferSize");
    let c = load(
        "replicator:\n  reader:\n    connectionString: esdb://a\n  sink:\n    connectionString: esdb://b\n    partitioner: ./p.js\n  scavenge: true\n",
    )
    .unwrap();
    assert!(c.scavenge);
    assert_eq!(c.sink.partitioner, Some(PathBuf::from("./p.js")));
}

#[test]
fn a_filter_error_gives_its_cause_once() {
    let (_, msg) = key_err(&with(
        "  filters:\n    - type: streamName\n      include: '^(orders'\n",
    ));
    let cause = replicator_transform::filter::Filter::new(
        replicator_transform::filter::FilterKind::StreamName,
        Some("^(orders"),
        None,
    )
    .unwrap_err()
    .source
    .to_string();
    assert_eq!(msg.matches(&cause).count(), 1, "{msg}");
}

#[test]
fn empty_values_are_not_set_and_blank_required_values_are_missing() {
    // Unused keys as Helm charts and environment templates write them.
    for auth in ["\"\"", "[]", "{}", "null"] {
        let yaml = format!(
            "replicator:\n  reader:\n    connectionString: esdb://a\n    auth: {auth}\n  sink:\n    connectionString: esdb://b\n    auth: {auth}\n"
        );
        assert!(load(&yaml).is_ok(), "auth: {auth}: {:?}", load(&yaml));
    }
    let (key, msg) = key_err(
        "replicator:\n  reader:\n    connectionString: '  '\n  sink:\n    connectionString: esdb://b\n",
    );
    assert_eq!(key, "replicator.reader.connectionString");
    assert!(msg.contains("required"), "{msg}");
    let (key, msg) = key_err(&with(
        "  checkpoint:\n    type: mongo\n    path: mongodb://db\n    database: ' '\n",
    ));
    assert_eq!(key, "replicator.checkpoint.database");
    assert!(msg.contains("must not be empty"), "{msg}");
}

#[test]
fn a_seeder_path_without_a_seeder_type_is_named_unless_empty() {
    let (key, _) = key_err(&with(
        "  checkpoint:\n    seeder:\n      type: none\n      path: /backup/chaser.chk\n",
    ));
    assert_eq!(key, "replicator.checkpoint.seeder.path");
    let c = load(&with(
        "  checkpoint:\n    seeder:\n      type: none\n      path: ''\n",
    ));
    assert_eq!(c.map(|c| c.checkpoint.seeder).ok(), Some(None));
}

#[test]
fn the_order_is_the_sources_unless_stream_order_is_asked_for() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.sink.order, WriteOrder::Source);
    assert_eq!(c.sink.writers(), 1, "one ordered writer");
    let c = load(&MINIMAL.replace(
        "    connectionString: esdb://target:2113\n",
        "    connectionString: esdb://target:2113\n    partitionCount: 8\n    order: Stream\n",
    ))
    .unwrap();
    assert_eq!(c.sink.order, WriteOrder::Stream);
    assert_eq!(c.sink.writers(), 8);
    let c = load_env(MINIMAL, &[("REPLICATOR_SINK_ORDER", "stream")]).unwrap();
    assert_eq!(c.sink.order, WriteOrder::Stream);

    let (key, message) = key_err(&MINIMAL.replace(
        "    connectionString: esdb://target:2113\n",
        "    connectionString: esdb://target:2113\n    order: global\n",
    ));
    assert_eq!(key, "replicator.sink.order");
    assert!(
        message.contains("\"global\"") && message.contains("`stream`"),
        "{message}"
    );
}

#[test]
fn the_tcp_reader_is_configured_with_its_page_size() {
    let c = load(
        "replicator:\n  reader:\n    connectionString: ConnectTo=tcp://admin:changeit@a:1113\n    \
         protocol: TCP\n    pageSize: 200\n  sink:\n    connectionString: esdb://b\n",
    )
    .unwrap();
    assert_eq!(c.reader.protocol, super::ReaderProtocol::Tcp);
    assert_eq!(c.reader.page_size.get(), 200);
    assert!(!format!("{c:?}").contains("changeit"));
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.reader.protocol, super::ReaderProtocol::Grpc);
    assert_eq!(c.reader.page_size.get(), 1024);
}

#[test]
fn the_csharp_kafka_sink_configuration_loads_as_written() {
    // The example of the C# tool's docs (sinks.mdx), key spellings as there.
    let c = load(
        "
replicator:
  reader:
    connectionString: esdb+discover://admin:changeit@xyz.mesb.eventstore.cloud
    protocol: grpc
  sink:
    connectionString: bootstrap.servers=localhost:9092;sasl.password=hush
    protocol: kafka
    partitionCount: 10
    router: ./config/route.js
",
    )
    .unwrap();
    assert_eq!(c.sink.protocol, super::SinkProtocol::Kafka);
    assert_eq!(c.sink.writers(), 1);
    let kafka = c.sink.kafka.as_ref().unwrap();
    assert_eq!(
        kafka.router.as_deref(),
        Some(Path::new("./config/route.js"))
    );
    assert_eq!(kafka.deletes, super::DeleteMode::Skip);
    assert!(kafka.metadata_headers.is_empty());
    assert_eq!(
        c.sink.connection_string.to_string(),
        "bootstrap.servers=localhost:9092;sasl.password=***"
    );

    let c = load_env(
        "
replicator:
  reader:
    connectionString: esdb://a
  sink:
    connectionString: bootstrap.servers=k:9092
    protocol: Kafka
    deletes: tombstone
    metadataHeaders: [tenant, correlationId]
",
        &[],
    )
    .unwrap();
    let kafka = c.sink.kafka.unwrap();
    assert_eq!(kafka.deletes, super::DeleteMode::Tombstone);
    assert_eq!(kafka.metadata_headers, ["tenant", "correlationId"]);
    let c = load_env(
        MINIMAL,
        &[
            ("REPLICATOR_SINK_PROTOCOL", "kafka"),
            (
                "REPLICATOR_SINK_CONNECTIONSTRING",
                "bootstrap.servers=k:9092",
            ),
            ("REPLICATOR_SINK_METADATAHEADERS", "a, b"),
        ],
    )
    .unwrap();
    assert_eq!(c.sink.kafka.unwrap().metadata_headers, ["a", "b"]);
}

#[test]
fn bearer_tokens_are_read_per_side_and_never_shown() {
    let yaml = "
replicator:
  reader:
    connectionString: esdb://source:2113
    token: s3cr3t-reader-t0ken
  sink:
    connectionString: esdb://target:2113
    tokenFile: /run/secrets/target-token
  checkpoint:
    type: stream
";
    let c = load(yaml).unwrap();
    assert_eq!(
        c.reader.token,
        Some(TokenConfig::Inline("s3cr3t-reader-t0ken".into()))
    );
    let file = TokenConfig::File("/run/secrets/target-token".into());
    assert_eq!(c.sink.token, Some(file.clone()));
    // The stream checkpoint store writes to the target: with its token.
    assert!(
        matches!(&c.checkpoint.store, StoreConfig::Stream { token: Some(t), .. } if *t == file)
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("target-token"), "{shown}");

    // From the environment, as every other key.
    let c = load_env(MINIMAL, &[("REPLICATOR_SINK_TOKENFILE", "/run/secrets/t")]).unwrap();
    assert_eq!(
        c.sink.token,
        Some(TokenConfig::File("/run/secrets/t".into()))
    );

    let (key, msg) = key_err(
        "replicator:\n  reader:\n    connectionString: esdb://s:2113\n  sink:\n    connectionString: esdb://t:2113\n    token: a\n    tokenFile: /f\n",
    );
    assert_eq!(key, "replicator.sink.token");
    assert!(msg.contains("not both"), "{msg}");
    let (key, msg) = key_err(
        "replicator:\n  reader:\n    connectionString: ConnectTo=tcp://h:1113\n    protocol: tcp\n    tokenFile: /f\n  sink:\n    connectionString: esdb://t:2113\n",
    );
    assert_eq!(key, "replicator.reader.token");
    assert!(msg.contains("tcp"), "{msg}");
}
