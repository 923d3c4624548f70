//! The adapters that implement the controller's ports ([`super::ports`]) with the edges: the
//! Azure client behind [`super::ports::ContainerGroups`], the GitHub client behind
//! [`super::ports::RunnerRegistrations`]. Each turns the edge's errors into the planner's
//! [`aci_runner_core::plan::EdgeError`] and the edge's types into the planner's.
pub mod azure;
pub mod github;

/// Signal `changes` when a shared list's `print` differs from the `previous` one (the first
/// list of a key has nothing to differ from). A full channel already holds a signal, which is
/// enough: every pool reconciles once for any number of changes.
fn signal_if_changed<P: PartialEq>(
    changes: Option<&tokio::sync::mpsc::Sender<()>>,
    previous: Option<P>,
    print: &P,
) {
    if let (Some(tx), Some(prev)) = (changes, previous)
        && prev != *print
    {
        let _ = tx.try_send(());
    }
}
