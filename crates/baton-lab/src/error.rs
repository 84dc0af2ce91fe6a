//! The one error type of the lab.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, inspecting or removing a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab name breaks the naming rule (namespace and interface names must stay short).
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The spec cannot be built (bad back-end count, missing binary, bad path).
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),
    /// Something of a lab with this name is already there.
    #[error("lab {name:?} already exists ({what}); run `baton lab down --name {name}` first")]
    Exists {
        /// The lab name.
        name: String,
        /// What was found (namespaces, lab directory).
        what: String,
    },
    /// Nothing of a lab with this name exists.
    #[error("no lab named {name:?} (no {} and no namespaces {name}-*)", labdir.display())]
    NotFound {
        /// The lab name.
        name: String,
        /// Where its state would be.
        labdir: PathBuf,
    },
    /// Namespaces exist but the state file does not: a crashed `up` or a manual mess.
    #[error("lab {name:?} is only half made ({detail}); run `baton lab down --name {name}`")]
    Incomplete {
        /// The lab name.
        name: String,
        /// What is missing.
        detail: String,
    },
    /// `exec` was asked for a host the lab does not have.
    #[error("lab {lab:?} has no host {host:?}; hosts: {known}")]
    UnknownHost {
        /// The lab name.
        lab: String,
        /// The requested host.
        host: String,
        /// The hosts it does have, comma separated.
        known: String,
    },
    /// `exec` was given no command.
    #[error("no command given to run in the lab")]
    EmptyCommand,
    /// An external command (`ip`, `sysctl`) ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An external command could not be started at all.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The state file is unreadable or cannot be written.
    #[error("state file {}: {source}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// The decoding or encoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A daemon died while `up` waited for the lab to become ready.
    #[error("{host} daemon exited during start-up ({status}); last lines of {}:\n{tail}", log.display())]
    DaemonExited {
        /// The host whose daemon died.
        host: String,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// The lab did not become ready in time.
    #[error("lab not ready after {waited:?}: {what}; last lines of {}:\n{tail}", log.display())]
    NotReady {
        /// Which check never passed.
        what: String,
        /// How long `up` waited.
        waited: Duration,
        /// The log most likely to say why (the front's).
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `restart` cannot do what was asked (wrong host or signal, the lab busy,
    /// a daemon that would not die).
    #[error("cannot restart {host} of lab {name:?}: {reason}")]
    CannotRestart {
        /// The lab name.
        name: String,
        /// The host whose daemon was to be restarted.
        host: String,
        /// Why not.
        reason: String,
    },
    /// `down` removed what it could but something survived.
    #[error("teardown of lab {name:?} incomplete: {}", problems.join("; "))]
    Teardown {
        /// The lab name.
        name: String,
        /// What could not be removed.
        problems: Vec<String>,
    },
}

impl LabError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LabError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
