//! The key table: every key of the C# tool's configuration and ours, with the
//! kind of value each holds (see the module docs of [`super`]).

/// The kind of value a key holds, used to accept quoted scalars and to type
/// environment overrides (environment variables are always strings).
#[derive(Debug, Clone, Copy)]
pub enum Node {
    /// A string.
    Str,
    /// A non-negative whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// Anything (lists and free-form sections: kept as they are).
    Any,
    /// A section with these keys, spelled canonically.
    Map(&'static [(&'static str, Node)]),
    /// A list of sections with these keys (`filters`); from the environment
    /// entry by entry, `REPLICATOR_FILTERS_0_TYPE`, like .NET's
    /// `Replicator__Filters__0__Type`.
    List(&'static [(&'static str, Node)]),
}

const READER: &[(&str, Node)] = &[
    ("connectionString", Node::Str),
    ("protocol", Node::Str),
    ("pageSize", Node::Int),
    ("auth", Node::Any),
    // Ours: a bearer token (KurrentDB's OAuth), or the file holding one.
    ("token", Node::Str),
    ("tokenFile", Node::Str),
];
const SINK: &[(&str, Node)] = &[
    ("connectionString", Node::Str),
    ("protocol", Node::Str),
    ("partitionCount", Node::Int),
    // Ours: source order (the default) or per-stream order.
    ("order", Node::Str),
    ("partitioner", Node::Str),
    ("bufferSize", Node::Int),
    ("auth", Node::Any),
    ("token", Node::Str),
    ("tokenFile", Node::Str),
    // The Kafka sink: the C# tool's route script, and ours: what a deleted
    // stream becomes, and metadata keys sent as headers.
    ("router", Node::Str),
    ("deletes", Node::Str),
    ("metadataHeaders", Node::Any),
];
const TRANSFORM: &[(&str, Node)] = &[
    ("type", Node::Str),
    ("config", Node::Str),
    ("bufferSize", Node::Int),
    // Ours: the C# default transform's `$original…` metadata, opt-in.
    ("originalMetadata", Node::Bool),
];
const FILTER: &[(&str, Node)] = &[
    ("type", Node::Str),
    ("include", Node::Str),
    ("exclude", Node::Str),
];
const SEEDER: &[(&str, Node)] = &[("type", Node::Str), ("path", Node::Str)];
const CHECKPOINT: &[(&str, Node)] = &[
    ("type", Node::Str),
    ("path", Node::Str),
    ("checkpointAfter", Node::Int),
    // Ours: the idle flush interval (the C# tool has no such key).
    ("checkpointIntervalInSeconds", Node::Int),
    ("database", Node::Str),
    ("instanceId", Node::Str),
    ("seeder", Node::Map(SEEDER)),
];
const HTTP: &[(&str, Node)] = &[("listen", Node::Str), ("unhealthyAfterSeconds", Node::Int)];
const REPLICATOR: &[(&str, Node)] = &[
    ("reader", Node::Map(READER)),
    ("sink", Node::Map(SINK)),
    ("scavenge", Node::Bool),
    ("filters", Node::List(FILTER)),
    ("transform", Node::Map(TRANSFORM)),
    ("checkpoint", Node::Map(CHECKPOINT)),
    ("runContinuously", Node::Bool),
    ("restartOnFailure", Node::Bool),
    ("restartDelayInSeconds", Node::Int),
    ("reportMetricsFrequencyInSeconds", Node::Int),
    // Ours, not the C# tool's: the status server and the call deadline.
    ("http", Node::Map(HTTP)),
    ("callTimeoutInSeconds", Node::Int),
];

/// Every key of the C# tool's configuration, supported or not, and our own
/// (`http`, `callTimeoutInSeconds`, `checkpoint.checkpointIntervalInSeconds`,
/// `transform.originalMetadata`).
pub const SCHEMA: Node = Node::Map(&[("replicator", Node::Map(REPLICATOR))]);
