//! One QuickJS runtime with a user script loaded, owned by one thread (QuickJS
//! runtimes are neither `Send` nor `Sync`), and the pool of such threads the
//! transform and the partitioner feed through channels.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rquickjs::context::EvalOptions;
use rquickjs::{CaughtError, Context, Function, Runtime, Value};

use super::JsError;

/// The JavaScript we run around the user's script: the `log` object (before
/// the script, which may log at load time) and the callers of `transform` and
/// `partition` (after it), which build the C# tool's event object and check
/// what the script returns, so that the Rust side only moves strings.
const PRELUDE: &str = r#"
(function (g, emit) {
  const show = (v) => {
    if (typeof v === "string") return v;
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; } catch (e) { return String(v); }
  };
  // The C# tool's log methods take a message template with {Name} holes and
  // up to five arguments; extra arguments are appended.
  const format = (message, args) => {
    let i = 0;
    let text = String(message).replace(/\{[^{}]+\}/g, (hole) => (i < args.length ? show(args[i++]) : hole));
    for (; i < args.length; i++) text += " " + show(args[i]);
    return text;
  };
  g.log = Object.freeze({
    debug: (message, ...args) => emit(0, format(message, args)),
    info: (message, ...args) => emit(1, format(message, args)),
    warn: (message, ...args) => emit(2, format(message, args)),
    error: (message, ...args) => emit(3, format(message, args)),
  });
})(globalThis, globalThis.__replicator_emit);
delete globalThis.__replicator_emit;
"#;

const CALLERS: &str = r#"
(function (g) {
  const userTransform = typeof transform === "function" ? transform : undefined;
  const userPartition = typeof partition === "function" ? partition : undefined;
  const userRoute = typeof route === "function" ? route : undefined;
  // 0: not JSON (the event passes unchanged); 1: dropped; a string: what is
  // wrong with the result; an array: [stream, eventType, data, meta|null].
  g.__replicator_transform = function (stream, eventType, data, meta, created) {
    let d, m = null;
    try {
      d = JSON.parse(data);
      if (meta !== null && meta !== undefined) m = JSON.parse(meta);
    } catch (e) {
      return 0;
    }
    const c = new Date(created);
    const r = userTransform({
      Stream: stream, EventType: eventType, Data: d, Meta: m, Created: c,
      stream: stream, eventType: eventType, data: d, meta: m, created: c,
    });
    if (r === null || r === undefined) return 1;
    if (typeof r !== "object") return "transform() returned a " + typeof r + ", not an object, null or undefined";
    const s = r.Stream !== undefined ? r.Stream : r.stream;
    const t = r.EventType !== undefined ? r.EventType : r.eventType;
    const rd = r.Data !== undefined ? r.Data : r.data;
    const rm = r.Meta !== undefined ? r.Meta : r.meta;
    if (typeof s !== "string" || s.trim() === "") return "transform() returned no Stream (it must be a non-blank string; got " + JSON.stringify(s) + ")";
    if (typeof t !== "string" || t.trim() === "") return "transform() returned no EventType (it must be a non-blank string; got " + JSON.stringify(t) + ")";
    const ds = rd === undefined ? undefined : JSON.stringify(rd);
    if (ds === undefined) return "transform() returned no Data (it must be a JSON value; return null to drop the event)";
    const ms = rm === undefined || rm === null ? null : JSON.stringify(rm);
    return [s, t, ds, ms === undefined ? null : ms];
  };
  // 0: not JSON (the default key); otherwise what partition() returned.
  g.__replicator_partition = function (stream, eventType, data, meta) {
    let d, m = null;
    try {
      d = JSON.parse(data);
      if (meta !== null && meta !== undefined) m = JSON.parse(meta);
    } catch (e) {
      return 0;
    }
    const r = userPartition({
      Stream: stream, EventType: eventType, Data: d, Meta: m,
      stream: stream, eventType: eventType, data: d, meta: m,
    });
    return typeof r === "string" ? r : null;
  };
  // The Kafka sink's router. 0: not JSON (the default route); null: the
  // default route; a string: what is wrong with the result; an array:
  // [topic, partitionKey|null]. The C# tool's docs declare
  // route(stream, eventType, data, metadata) while its code passes one
  // object, so a function declaring two or more parameters gets the four
  // values and any other the object.
  g.__replicator_route = function (stream, eventType, data, meta) {
    let d, m = null;
    try {
      d = JSON.parse(data);
      if (meta !== null && meta !== undefined) m = JSON.parse(meta);
    } catch (e) {
      return 0;
    }
    const r = userRoute.length >= 2
      ? userRoute(stream, eventType, d, m)
      : userRoute({
          Stream: stream, EventType: eventType, Data: d, Meta: m,
          stream: stream, eventType: eventType, data: d, meta: m,
        });
    if (r === null || r === undefined || typeof r !== "object") return null;
    const t = r.topic !== undefined ? r.topic : r.Topic;
    const k = r.partitionKey !== undefined ? r.partitionKey : r.PartitionKey;
    if (typeof t !== "string" || t.trim() === "") return "route() returned no topic (it must be a non-blank string; got " + JSON.stringify(t) + ")";
    if (k !== undefined && k !== null && typeof k !== "string") return "route() returned a partitionKey that is not a string (got " + JSON.stringify(k) + ")";
    return [t, k === undefined ? null : k];
  };
})(globalThis);
"#;

/// Which global function of the script is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Transform,
    Partition,
    Route,
}

impl Entry {
    pub(crate) fn function(self) -> &'static str {
        match self {
            Entry::Transform => "transform",
            Entry::Partition => "partition",
            Entry::Route => "route",
        }
    }

    fn caller(self) -> &'static str {
        match self {
            Entry::Transform => "__replicator_transform",
            Entry::Partition => "__replicator_partition",
            Entry::Route => "__replicator_route",
        }
    }
}

/// What the script is given (the fields of the C# tool's event object).
pub(crate) struct Input {
    pub stream: String,
    pub event_type: String,
    pub data: Bytes,
    pub metadata: Bytes,
    pub created: SystemTime,
}

/// What a call came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The data or the metadata is not JSON: the script was not called.
    NotJson,
    /// `transform` returned null or undefined.
    Dropped,
    /// `transform` returned an event.
    Replaced {
        stream: String,
        event_type: String,
        data: String,
        metadata: Option<String>,
    },
    /// `partition` returned a string (`Some`) or something else (`None`).
    Key(Option<String>),
    /// `route` returned a topic and maybe a key (`Some`), or no route
    /// (`None`: the default one).
    Route(Option<(String, Option<String>)>),
}

/// A QuickJS runtime with the script loaded. Lives on one thread.
struct Engine {
    // Dropped after the context (field order), as QuickJS requires.
    ctx: Context,
    _runtime: Runtime,
    deadline: Rc<Cell<Option<Instant>>>,
    interrupted: Rc<Cell<bool>>,
    time_limit: Arc<AtomicU64>,
    file: String,
}

impl Engine {
    fn load(
        path: &Path,
        source: &str,
        entry: Entry,
        time_limit: Arc<AtomicU64>,
    ) -> Result<Engine, JsError> {
        let engine_error = |message: String| JsError::Engine {
            path: path.to_path_buf(),
            message,
        };
        let runtime = Runtime::new().map_err(|e| engine_error(e.to_string()))?;
        let deadline: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let interrupted = Rc::new(Cell::new(false));
        {
            let deadline = deadline.clone();
            let interrupted = interrupted.clone();
            runtime.set_interrupt_handler(Some(Box::new(move || {
                let over = deadline.get().is_some_and(|d| Instant::now() >= d);
                if over {
                    interrupted.set(true);
                }
                over
            })));
        }
        let ctx = Context::full(&runtime).map_err(|e| engine_error(e.to_string()))?;
        let file = path.display().to_string();
        let engine = Engine {
            ctx,
            _runtime: runtime,
            deadline,
            interrupted,
            time_limit,
            file,
        };
        let log_target = engine.file.clone();
        engine.ctx.with(|ctx| -> Result<(), JsError> {
            let emit = Function::new(ctx.clone(), move |level: i32, message: String| {
                emit_log(&log_target, level, &message)
            })
            .map_err(|e| engine_error(e.to_string()))?;
            ctx.globals()
                .set("__replicator_emit", emit)
                .map_err(|e| engine_error(e.to_string()))?;
            ctx.eval::<(), _>(PRELUDE)
                .map_err(|e| engine_error(describe(&ctx, e, &engine.file, false)))?;
            engine.arm();
            let mut options = EvalOptions::default();
            options.global = true;
            options.strict = false;
            options.filename = Some(engine.file.clone());
            let loaded = ctx.eval_with_options::<(), _>(source.as_bytes().to_vec(), options);
            engine.disarm();
            loaded.map_err(|e| JsError::Script {
                path: path.to_path_buf(),
                message: describe(&ctx, e, &engine.file, engine.interrupted.replace(false)),
            })?;
            let kind: String = ctx
                .eval(format!("typeof {}", entry.function()))
                .map_err(|e| engine_error(describe(&ctx, e, &engine.file, false)))?;
            if kind != "function" {
                return Err(JsError::NoFunction {
                    path: path.to_path_buf(),
                    function: entry.function(),
                    found: kind,
                });
            }
            ctx.eval::<(), _>(CALLERS)
                .map_err(|e| engine_error(describe(&ctx, e, &engine.file, false)))?;
            Ok(())
        })?;
        Ok(engine)
    }

    fn arm(&self) {
        self.interrupted.set(false);
        self.deadline.set(Some(Instant::now() + self.time_limit()));
    }

    fn time_limit(&self) -> Duration {
        Duration::from_millis(self.time_limit.load(Ordering::Relaxed))
    }

    fn disarm(&self) {
        self.deadline.set(None);
    }

    /// Calls the script on one event. `Err` is the script's error (message and
    /// line) or what is wrong with its result.
    fn call(&self, entry: Entry, input: &Input) -> Result<Outcome, String> {
        let (Ok(data), Ok(metadata)) = (
            std::str::from_utf8(&input.data),
            std::str::from_utf8(&input.metadata),
        ) else {
            return Ok(Outcome::NotJson);
        };
        let metadata = (!metadata.is_empty()).then_some(metadata);
        self.ctx.with(|ctx| {
            let caller: Function<'_> = ctx
                .globals()
                .get(entry.caller())
                .map_err(|e| e.to_string())?;
            self.arm();
            let result: rquickjs::Result<Value<'_>> = match entry {
                Entry::Transform => {
                    let created = input
                        .created
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64() * 1000.0)
                        .unwrap_or(0.0);
                    caller.call((
                        input.stream.as_str(),
                        input.event_type.as_str(),
                        data,
                        metadata,
                        created,
                    ))
                }
                Entry::Partition | Entry::Route => caller.call((
                    input.stream.as_str(),
                    input.event_type.as_str(),
                    data,
                    metadata,
                )),
            };
            self.disarm();
            let value = result.map_err(|e| {
                let interrupted = self.interrupted.replace(false);
                let what = describe(&ctx, e, &self.file, interrupted);
                if interrupted {
                    format!(
                        "{}() ran longer than {:?} and was stopped ({what})",
                        entry.function(),
                        self.time_limit()
                    )
                } else {
                    what
                }
            })?;
            read_outcome(entry, &value)
        })
    }
}

fn read_outcome(entry: Entry, value: &Value<'_>) -> Result<Outcome, String> {
    if value.as_int() == Some(0) {
        return Ok(Outcome::NotJson);
    }
    match entry {
        Entry::Partition => Ok(Outcome::Key(
            value.as_string().and_then(|s| s.to_string().ok()),
        )),
        Entry::Route => {
            if let Some(problem) = value.as_string() {
                return Err(problem.to_string().map_err(|e| e.to_string())?);
            }
            let Some(array) = value.as_array() else {
                return Ok(Outcome::Route(None));
            };
            let topic: String = array.get(0).map_err(|e| e.to_string())?;
            let key: Option<String> = array.get(1).map_err(|e| e.to_string())?;
            Ok(Outcome::Route(Some((topic, key))))
        }
        Entry::Transform => {
            if value.as_int() == Some(1) {
                return Ok(Outcome::Dropped);
            }
            if let Some(problem) = value.as_string() {
                return Err(problem.to_string().map_err(|e| e.to_string())?);
            }
            let array = value
                .as_array()
                .ok_or_else(|| format!("unexpected result {value:?}"))?;
            let field = |i: usize| array.get::<Option<String>>(i).map_err(|e| e.to_string());
            Ok(Outcome::Replaced {
                stream: field(0)?.unwrap_or_default(),
                event_type: field(1)?.unwrap_or_default(),
                data: field(2)?.unwrap_or_default(),
                metadata: field(3)?,
            })
        }
    }
}

fn emit_log(script: &str, level: i32, message: &str) {
    match level {
        0 => tracing::debug!(target: "replicator::js", script, "{message}"),
        1 => tracing::info!(target: "replicator::js", script, "{message}"),
        2 => tracing::warn!(target: "replicator::js", script, "{message}"),
        _ => tracing::error!(target: "replicator::js", script, "{message}"),
    }
}

/// The script's error as `Name: message (file line L, column C)`.
fn describe(
    ctx: &rquickjs::Ctx<'_>,
    error: rquickjs::Error,
    file: &str,
    interrupted: bool,
) -> String {
    match CaughtError::from_error(ctx, error) {
        CaughtError::Exception(exception) => {
            let name: Option<String> = exception.get("name").ok();
            let message = exception.message().unwrap_or_default();
            let mut text = match name {
                Some(name) if !name.is_empty() => format!("{name}: {message}"),
                _ => message,
            };
            if !interrupted {
                if let Some(place) = exception.stack().as_deref().and_then(|s| place_in(s, file)) {
                    text.push_str(&format!(" ({place})"));
                }
            }
            text
        }
        CaughtError::Value(value) => {
            let shown = ctx
                .json_stringify(value.clone())
                .ok()
                .flatten()
                .and_then(|s| s.to_string().ok())
                .unwrap_or_else(|| format!("{value:?}"));
            format!("the script threw {shown}")
        }
        CaughtError::Error(error) => error.to_string(),
    }
}

/// Finds `file:line:column` in the first frame of a QuickJS stack that is in
/// the user's file and says it as `line L, column C` (the caller names the
/// file).
fn place_in(stack: &str, file: &str) -> Option<String> {
    stack.lines().find_map(|frame| {
        let at = frame.find(file)?;
        let rest = &frame[at + file.len()..];
        let rest = rest.strip_prefix(':')?;
        let mut parts = rest.split(|c: char| !c.is_ascii_digit());
        let line = parts.next().filter(|l| !l.is_empty())?;
        let column = parts.next().filter(|c| !c.is_empty());
        Some(match column {
            Some(column) => format!("line {line}, column {column}"),
            None => format!("line {line}"),
        })
    })
}

type Answer = Result<Outcome, String>;

/// Where an engine sends its answer: an async caller awaits a oneshot, a
/// synchronous one (the partitioner, called from inside the runtime, where
/// blocking on a tokio channel panics) a std channel.
enum Reply {
    Async(tokio::sync::oneshot::Sender<Answer>),
    Blocking(mpsc::SyncSender<Answer>),
}

impl Reply {
    fn send(self, answer: Answer) {
        // The caller may have given up (a deadline): nobody to tell.
        let _ = match self {
            Reply::Async(tx) => tx.send(answer).map_err(drop),
            Reply::Blocking(tx) => tx.send(answer).map_err(drop),
        };
    }
}

type Job = (Input, Reply);

/// Threads that each own an [`Engine`] with the same script, fed from one
/// queue: a call goes to whichever engine is free.
pub(crate) struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    path: PathBuf,
    source: Arc<str>,
    entry: Entry,
    time_limit: Arc<AtomicU64>,
    size: usize,
}

impl Pool {
    /// Reads the script and starts one engine.
    pub(crate) fn start(path: &Path, entry: Entry, time_limit: Duration) -> Result<Pool, JsError> {
        let source = std::fs::read_to_string(path).map_err(|source| JsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, rx) = mpsc::channel();
        let mut pool = Pool {
            jobs: Mutex::new(Some(tx)),
            queue: Arc::new(Mutex::new(rx)),
            path: path.to_path_buf(),
            source: source.into(),
            entry,
            time_limit: Arc::new(AtomicU64::new(
                u64::try_from(time_limit.as_millis()).unwrap_or(u64::MAX),
            )),
            size: 0,
        };
        pool.grow_to(1)?;
        Ok(pool)
    }

    /// Starts engines until there are `size`.
    pub(crate) fn grow_to(&mut self, size: usize) -> Result<(), JsError> {
        while self.size < size {
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let queue = self.queue.clone();
            let path = self.path.clone();
            let source = self.source.clone();
            let (entry, time_limit) = (self.entry, self.time_limit.clone());
            std::thread::Builder::new()
                .name(format!("js-{}-{}", entry.function(), self.size))
                .spawn(move || {
                    let engine = match Engine::load(&path, &source, entry, time_limit) {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(()));
                            engine
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                            return;
                        }
                    };
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = queue.lock().map(|q| q.recv());
                        let Ok(Ok((input, reply))) = job else { return };
                        reply.send(engine.call(entry, &input));
                    }
                })
                .map_err(|e| JsError::Engine {
                    path: self.path.clone(),
                    message: format!("cannot start a JavaScript thread: {e}"),
                })?;
            ready_rx.recv().map_err(|_| JsError::Engine {
                path: self.path.clone(),
                message: "the JavaScript thread ended while loading the script".into(),
            })??;
            self.size += 1;
        }
        Ok(())
    }

    /// How long one call may run before the engine stops it (all engines).
    pub(crate) fn set_time_limit(&self, limit: Duration) {
        let millis = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.time_limit.store(millis, Ordering::Relaxed);
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Runs one call on a free engine.
    pub(crate) async fn call(&self, input: Input) -> Result<Outcome, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(input, Reply::Async(reply))?;
        answer
            .await
            .map_err(|_| "the JavaScript engine stopped".to_string())?
    }

    /// Runs one call on a free engine, blocking the calling thread.
    pub(crate) fn call_blocking(&self, input: Input) -> Result<Outcome, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(input, Reply::Blocking(reply))?;
        answer
            .recv()
            .map_err(|_| "the JavaScript engine stopped".to_string())?
    }

    fn send(&self, input: Input, reply: Reply) -> Result<(), String> {
        let jobs = self
            .jobs
            .lock()
            .map_err(|_| "the JavaScript pool is poisoned")?;
        jobs.as_ref()
            .ok_or("the JavaScript pool is stopped")?
            .send((input, reply))
            .map_err(|_| "the JavaScript engine stopped".to_string())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue ends the engine threads once their call returns.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::place_in;

    #[test]
    fn the_place_is_the_first_frame_in_the_users_file() {
        let stack =
            "    at <anonymous> (t.js:7:12)\n    at __replicator_transform (<input>:20:5)\n";
        assert_eq!(
            place_in(stack, "t.js").as_deref(),
            Some("line 7, column 12")
        );
        assert_eq!(place_in("    at f (<input>:2:3)\n", "t.js"), None);
    }
}
