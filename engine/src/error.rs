//! The engine's error type, classified by who is at fault.
//!
//! Like DataFusion's errors, every variant says whose move it is: the user fixes a
//! [`Error::Config`] or [`Error::Sql`]; a slice that fails a check, or reads a file that
//! is not valid, is the data's fault ([`Error::Assertion`], [`Error::Data`]);
//! [`Error::Execution`] comes from storage or the runtime and may succeed when retried;
//! and [`Error::Internal`] is a bug in `backfill`.
//! The CLI maps these classes to exit codes; nothing in the engine prints or exits.

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is wrong. `location` names the file and, where known, the line
    /// (`pipelines/daily.toml:12`).
    #[error("{location}: {message}")]
    Config { location: String, message: String },

    /// A run setting (the selection, a budget) is wrong. The message names settings as
    /// `{start}`-style placeholders, so each front end words them its own way
    /// ([`Error::worded`]); shown as is, they read as the library's names.
    #[error("{}", in_words(.settings, .message, &|s| s.name().to_string()))]
    Setting {
        settings: Vec<Setting>,
        message: String,
    },

    /// The transform or an assertion's SQL does not parse or plan.
    // The DataFusion error is shown in full here and deliberately not chained as a
    // source, so that printing the chain does not repeat it.
    #[error("{context}: {}", shown.clone().unwrap_or_else(|| error.to_string()))]
    Sql {
        context: String,
        error: Box<datafusion::error::DataFusionError>,
        /// The error as told to people, when it is pointed at the SQL as written.
        shown: Option<String>,
    },

    /// A slice's output failed one of its assertions; nothing was committed.
    #[error("assertion failed on slice {slice}: {}", .failures.join("; "))]
    Assertion {
        slice: String,
        failures: Vec<String>,
    },

    /// A source file cannot be read, or its contents do not fit: retrying cannot help,
    /// and only the slices that read it fail.
    #[error("{context}: {message}")]
    Data { context: String, message: String },

    /// Reading, computing or writing failed at run time (storage, Delta log, DataFusion).
    /// `transient` when asking again may succeed (a reset connection, a 5xx, a conflict
    /// with another writer, a time limit); not when storage said no for good (access
    /// denied, an invalid path) or what it returned cannot be read (corrupt JSON).
    #[error("{context}: {message}")]
    Execution {
        context: String,
        message: String,
        transient: bool,
    },

    /// Another run holds what this one needs (its pipeline's lease): nothing ran, and
    /// the same command succeeds once that run ends.
    #[error("{message}")]
    Busy { message: String },

    /// A bug: an invariant of `backfill` itself did not hold.
    #[error("internal error (a bug in backfill): {0}")]
    Internal(String),
}

/// A setting of a run, as the engine's API names it; front ends have their own names for
/// them (the CLI its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Start,
    End,
    Keys,
    MaxSlices,
    MaxBytes,
    AllowEmpty,
    OlderThan,
    NoRunInFlight,
    ExpectedPlan,
    Through,
    Lookback,
    Every,
    Cron,
}

impl Setting {
    pub const ALL: [Setting; 13] = [
        Setting::Start,
        Setting::End,
        Setting::Keys,
        Setting::MaxSlices,
        Setting::MaxBytes,
        Setting::AllowEmpty,
        Setting::OlderThan,
        Setting::NoRunInFlight,
        Setting::ExpectedPlan,
        Setting::Through,
        Setting::Lookback,
        Setting::Every,
        Setting::Cron,
    ];

    /// The name of the field that holds it in the engine's API.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Start => "start",
            Setting::End => "end",
            Setting::Keys => "keys",
            Setting::MaxSlices => "max_slices",
            Setting::MaxBytes => "max_bytes",
            Setting::AllowEmpty => "allow_empty",
            Setting::OlderThan => "older_than",
            Setting::NoRunInFlight => "no_run_in_flight",
            Setting::ExpectedPlan => "expected_plan",
            Setting::Through => "through",
            Setting::Lookback => "lookback",
            Setting::Every => "every",
            Setting::Cron => "cron",
        }
    }
}

/// `settings: message`, with every `{name}` placeholder in the message replaced by how
/// `word` names that setting.
fn in_words(settings: &[Setting], message: &str, word: &dyn Fn(Setting) -> String) -> String {
    let mut message = message.to_string();
    for setting in Setting::ALL {
        message = message.replace(&format!("{{{}}}", setting.name()), &word(setting));
    }
    let settings: Vec<String> = settings.iter().map(|s| word(*s)).collect();
    format!("{}: {message}", settings.join("/"))
}

/// Who has to act for an error to go away; the CLI's exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// The pipeline file, the SQL or the command line.
    User,
    /// The data: a slice failed a check.
    Data,
    /// The environment: storage, network, resources. Retrying may help.
    Environment,
    /// `backfill` itself.
    Internal,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::User,
        Fault::Data,
        Fault::Environment,
        Fault::Internal,
    ];

    /// What a person does about a failed slice of this kind, starting with whether
    /// running the same command again can help.
    pub fn next_step(self) -> &'static str {
        match self {
            Fault::User => {
                "running again fails the same way: fix the pipeline's SQL or settings first"
            }
            Fault::Data => {
                "running again fails the same way until the data, the check or the range changes"
            }
            Fault::Environment => "a transient fault: run the same command again",
            Fault::Internal => "a fault of backfill itself: please report it, with the error",
        }
    }
}

impl Error {
    pub fn config(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            location: location.into(),
            message: message.into(),
        }
    }

    /// An error about run settings; `message` names settings as `{start}`, `{keys}`, ….
    pub fn setting(settings: &[Setting], message: impl Into<String>) -> Self {
        Error::Setting {
            settings: settings.to_vec(),
            message: message.into(),
        }
    }

    /// The error as a front end words it, naming each run setting by `word`: the CLI
    /// passes its flags. Errors that name no setting read as they display.
    pub fn worded(&self, word: &dyn Fn(Setting) -> String) -> String {
        match self {
            Error::Setting { settings, message } => in_words(settings, message, word),
            other => other.to_string(),
        }
    }

    pub fn in_file(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::config(path.display().to_string(), message)
    }

    pub fn sql(context: impl Into<String>, source: datafusion::error::DataFusionError) -> Self {
        Error::Sql {
            context: context.into(),
            error: Box::new(source),
            shown: None,
        }
    }

    /// A run-time failure, `transient` if it may pass when the work is tried again.
    pub fn run_time(
        transient: bool,
        context: impl Into<String>,
        message: impl std::fmt::Display,
    ) -> Self {
        Error::Execution {
            context: context.into(),
            message: message.to_string(),
            transient,
        }
    }

    /// A run-time failure that may pass when the work is tried again.
    pub fn execution(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::run_time(true, context, message)
    }

    /// A run-time failure that trying again cannot fix.
    pub fn lasting(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::run_time(false, context, message)
    }

    /// Whether trying the same work again may succeed: only such failures are retried.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Execution {
                transient: true,
                ..
            }
        )
    }

    /// The same error again, for each slice of a group commit that failed as one.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Config { location, message } => Error::config(location, message),
            Error::Setting { settings, message } => Error::Setting {
                settings: settings.clone(),
                message: message.clone(),
            },
            Error::Sql {
                context,
                error,
                shown,
            } => Error::Sql {
                context: context.clone(),
                error: Box::new(datafusion::error::DataFusionError::Plan(error.to_string())),
                shown: shown.clone(),
            },
            Error::Assertion { slice, failures } => Error::Assertion {
                slice: slice.clone(),
                failures: failures.clone(),
            },
            Error::Data { context, message } => Error::Data {
                context: context.clone(),
                message: message.clone(),
            },
            Error::Execution {
                context,
                message,
                transient,
            } => Error::run_time(*transient, context, message),
            Error::Busy { message } => Error::Busy {
                message: message.clone(),
            },
            Error::Internal(message) => Error::Internal(message.clone()),
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Error::Config { .. } | Error::Setting { .. } | Error::Sql { .. } => Fault::User,
            Error::Assertion { .. } | Error::Data { .. } => Fault::Data,
            Error::Execution { .. } | Error::Busy { .. } => Fault::Environment,
            Error::Internal(_) => Fault::Internal,
        }
    }
}

/// Adds context to errors from DataFusion and delta-rs, keeping their class: a planning
/// error in DataFusion is the user's SQL, everything else is execution.
pub(crate) trait ResultExt<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> ResultExt<T> for std::result::Result<T, datafusion::error::DataFusionError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| carried_back(error).unwrap_or_else(|error| classify(error, context)))
    }
}

/// One of our errors that DataFusion carried back from our code it called (a source
/// offered to a cluster's session), as it was raised: its class is already known.
fn carried_back(
    error: datafusion::error::DataFusionError,
) -> std::result::Result<Error, datafusion::error::DataFusionError> {
    use datafusion::error::DataFusionError as E;
    match error {
        E::External(inner) => inner
            .downcast::<Error>()
            .map(|ours| *ours)
            .map_err(E::External),
        E::Context(context, inner) => {
            carried_back(*inner).map_err(|inner| E::Context(context, Box::new(inner)))
        }
        E::Diagnostic(diagnostic, inner) => {
            carried_back(*inner).map_err(|inner| E::Diagnostic(diagnostic, Box::new(inner)))
        }
        other => Err(other),
    }
}

/// Whose move a DataFusion error is.
fn classify(error: datafusion::error::DataFusionError, context: impl FnOnce() -> String) -> Error {
    use datafusion::error::DataFusionError as E;
    match error.find_root() {
        E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) => {
            Error::sql(context(), error)
        }
        // A file that is not valid Parquet stays invalid however often it is read; a
        // storage failure while reading it arrives as `External` and may pass.
        E::ParquetError(parquet)
            if !matches!(
                **parquet,
                datafusion::parquet::errors::ParquetError::External(_)
            ) =>
        {
            Error::Data {
                context: context(),
                message: one_line(&error),
            }
        }
        _ if store_error_in(&error).is_some_and(|e| !store_error_is_transient(e)) => {
            Error::lasting(context(), error)
        }
        _ => Error::execution(context(), error),
    }
}

/// The object store's error behind `error`, however deeply DataFusion and Parquet wrapped
/// it.
fn store_error_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a object_store::Error> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(store) = current.downcast_ref::<object_store::Error>() {
            return Some(store);
        }
        if let Some(datafusion::error::DataFusionError::ObjectStore(store)) = current.downcast_ref()
        {
            return Some(store);
        }
        cause = current.source();
    }
    None
}

/// Whether an object store's answer may change if asked again. `NotFound` may (a file
/// replaced between listing and reading), as may the answers of racing writers; access
/// denied, a bad path or an unsupported request will not.
pub(crate) fn store_error_is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        error,
        E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// Whether a delta-rs error may pass if the work is tried again: storage by the object
/// store's rule, conflicts with other writers yes, a log or file that cannot be read as
/// Delta or Parquet no.
fn delta_error_is_transient(error: &deltalake::DeltaTableError) -> bool {
    use deltalake::DeltaTableError as E;
    match error {
        E::ObjectStore { source } => store_error_is_transient(source),
        E::InvalidJsonLog { .. }
        | E::InvalidStatsJson { .. }
        | E::SerializeLogJson { .. }
        | E::Parquet { .. }
        | E::Arrow { .. }
        | E::InvalidData { .. }
        | E::NotATable(_)
        | E::InvalidTableLocation(_)
        | E::SchemaMismatch { .. }
        | E::MissingFeature { .. } => false,
        _ => true,
    }
}

/// A DataFusion error on one line: its contexts, then the root cause, joined by colons.
fn one_line(error: &datafusion::error::DataFusionError) -> String {
    match error {
        datafusion::error::DataFusionError::Context(context, inner) => {
            format!("{context}: {}", one_line(inner))
        }
        other => other.to_string(),
    }
}

impl<T> ResultExt<T> for std::result::Result<T, deltalake::DeltaTableError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::run_time(delta_error_is_transient(&error), context(), error))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, object_store::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::run_time(store_error_is_transient(&error), context(), error))
    }
}

impl<T> ResultExt<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| Error::execution(context(), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_errors_keep_their_class_when_datafusion_carries_them_back() {
        use datafusion::error::DataFusionError as E;
        let carried = |ours: Error| -> Result<()> {
            let inner = E::External(Box::new(ours));
            Err(E::Context("planning".into(), Box::new(inner))).context(|| "slice 1".into())
        };
        let changed = carried(Error::execution("source `orders`", "the table changed"));
        assert!(changed.as_ref().unwrap_err().is_transient(), "{changed:?}");
        let refused = carried(Error::config("source `orders`", "uses deletionVectors"));
        assert!(
            matches!(&refused, Err(Error::Config { location, .. }) if location == "source `orders`"),
            "{refused:?}"
        );
        // Anything else from outside is classified as before: not ours, so execution.
        let io = std::io::Error::other("reset");
        let theirs: Result<()> = Err(E::External(Box::new(io))).context(|| "slice 1".into());
        assert!(theirs.unwrap_err().is_transient());
    }

    #[test]
    fn settings_read_as_the_api_names_them_unless_a_front_end_words_them() {
        let error = Error::setting(
            &[Setting::Start, Setting::End],
            "the range is reversed: {start} 2 is after {end} 1; or give {keys}",
        );
        assert_eq!(
            error.to_string(),
            "start/end: the range is reversed: start 2 is after end 1; or give keys"
        );
        let flags = error.worded(&|s| format!("--{}", s.name().replace('_', "-")));
        assert_eq!(
            flags,
            "--start/--end: the range is reversed: --start 2 is after --end 1; or give --keys"
        );
        assert_eq!(error.fault(), Fault::User);
    }
}
