//! The bridge between the simulated ACI (which runs container groups) and what runs inside the
//! containers (simulated GitHub Actions runners). The ARM simulator calls [`ContainerRuntime::start`]
//! when a group's container enters `Running` and [`ContainerRuntime::kill`] when the group is
//! deleted or stopped; the runtime reports the container's exit through [`ExitNotifier`].
use std::sync::Arc;

/// One environment variable as the container receives it (ACI `environmentVariables`).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerEnv {
    pub name: String,
    pub value: String,
    /// True when it was passed as `secureValue`.
    pub secure: bool,
}

/// A container that just started inside a container group.
#[derive(Clone, Debug)]
pub struct StartedContainer {
    /// Full ARM resource id of the container group (unique while the group exists).
    pub group_id: String,
    pub group_name: String,
    pub container_name: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<ContainerEnv>,
    /// Group tags at creation time.
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Called by the runtime exactly once when the container's main process exits; also takes
/// the lines the process writes to its output (the container's log, served by the ARM
/// simulator's logs API).
#[derive(Clone)]
pub struct ExitNotifier {
    exit: Arc<dyn Fn(i32) + Send + Sync>,
    log: Option<LogSink>,
}

/// Where a container's output lines go.
type LogSink = Arc<dyn Fn(&str) + Send + Sync>;

impl ExitNotifier {
    pub fn new(f: impl Fn(i32) + Send + Sync + 'static) -> Self {
        Self { exit: Arc::new(f), log: None }
    }
    /// Lines written through [`ExitNotifier::log`] go to `f`.
    pub fn with_log(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log = Some(Arc::new(f));
        self
    }
    pub fn exited(&self, exit_code: i32) {
        (self.exit)(exit_code)
    }
    /// The process wrote `line` to its output (dropped when nothing collects the log).
    pub fn log(&self, line: &str) {
        if let Some(f) = &self.log {
            f(line)
        }
    }
}

impl std::fmt::Debug for ExitNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitNotifier")
    }
}

/// What runs inside simulated containers.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// The container started (after the simulated image pull). The runtime starts its process and
    /// calls `exit` when the process ends (exit code 0 = success).
    fn start(&self, container: StartedContainer, exit: ExitNotifier);
    /// The group was deleted or stopped: the process is gone without an exit report.
    fn kill(&self, group_id: &str);
}

/// A runtime whose containers run until killed (used when no GitHub simulator is attached).
#[derive(Default)]
pub struct IdleRuntime;

impl ContainerRuntime for IdleRuntime {
    fn start(&self, _container: StartedContainer, _exit: ExitNotifier) {}
    fn kill(&self, _group_id: &str) {}
}
