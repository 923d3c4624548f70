//! Failed runners can be debugged: before the controller deletes the container group of a
//! runner that failed, crashed or timed out, it reads the end of the container's log through
//! the ACI logs API and puts it, secrets redacted, in a `RunnerFailedLogs` Warning Event and in
//! `status.lastFailure` (issue 17, "Debuggable failures").
use aci_runner_devkit::sim::github::GithubFaults;
use aci_runner_devkit::testing::harness::fast_sim_options;
use aci_runner_devkit::testing::world::{T, World};
use serde_json::json;

/// Every runner process exits 1 before it registers (the simulated GitHub's crash fault); its
/// start script printed its JIT config first. The log tail arrives in an Event and the status,
/// the JIT config nowhere, and the log was read before the group's delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runner_leaves_its_redacted_log_tail_in_an_event_and_the_status() {
    let crashing = GithubFaults { crash_before_registration: 1.0, ..GithubFaults::default() };
    let mut w =
        World::builder("e2e-crashlog").seed(177).github_faults(crashing).start_pool("crashlog", 1, 1).await;

    let p = w
        .wait_pool("crashlog", "a lastFailure with a log tail", T, |p| {
            p.status.as_ref().and_then(|s| s.last_failure.as_ref()).is_some_and(|f| f.log_tail.is_some())
        })
        .await;
    let failure = p.status.as_ref().and_then(|s| s.last_failure.clone()).unwrap();
    assert_eq!(failure.reason, "Crashed", "{failure:?}");
    assert!(failure.runner.starts_with("crashlog-"), "{failure:?}");
    let tail = failure.log_tail.clone().unwrap();
    assert!(tail.contains("An error occurred: crashed before registration"), "{tail}");
    assert!(tail.contains("+ ./run.sh --jitconfig [REDACTED]"), "{tail}");

    let note = w.wait_warning("crashlog", "RunnerFailedLogs").await;
    assert!(note.contains(&format!("runner {} removed (Crashed)", failure.runner)), "{note}");
    assert!(note.contains("An error occurred: crashed before registration"), "{note}");
    assert!(note.len() <= 1024, "{}", note.len());

    // The JIT configs the simulated GitHub handed out appear in no Event and no status.
    let secrets = w.sim.github.issued_secrets();
    assert!(!secrets.is_empty());
    let events = w.events_of("crashlog").await;
    let status = serde_json::to_string(&w.get_pool("crashlog").await.unwrap().status).unwrap();
    for s in &secrets {
        assert!(!status.contains(s.as_str()), "a JIT config is in the status: {status}");
        for (_, reason, note) in &events {
            assert!(!note.contains(s.as_str()), "a JIT config is in the {reason} Event: {note}");
        }
    }

    // The log was read (200) before the delete of the same group was sent.
    let calls = w.sim.arm.calls();
    let group = format!("/containerGroups/{}", failure.runner);
    let logs_at = calls
        .iter()
        .position(|c| {
            c.op == "logs" && c.status == 200 && c.path.contains(&format!("{group}/containers/runner/logs"))
        })
        .unwrap_or_else(|| panic!("no logs call for {group}: {calls:#?}"));
    let delete_at = calls
        .iter()
        .position(|c| c.op == "delete" && c.path.contains(&format!("{group}?")))
        .unwrap_or_else(|| panic!("no delete of {group}"));
    assert!(logs_at < delete_at, "logs read at {logs_at}, delete at {delete_at}");
    w.stop().await;
}

/// A runner whose process never gets its session accepted (the simulated runner takes ten
/// minutes to start) times out after `registrationTimeout`; its log tail says what it was
/// waiting on, with the JIT config redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_runner_leaves_what_it_was_waiting_on() {
    let mut opts = fast_sim_options(179);
    opts.github.runner_startup_ms = 600_000;
    let mut w = World::builder("e2e-timeoutlog").sim_options(opts).start().await;
    w.apply("timeoutlog", json!({"scaling": {"minIdle": 1, "maxRunners": 1, "registrationTimeout": "4s"}}))
        .await;
    let p = w
        .wait_pool("timeoutlog", "a RegistrationTimeout lastFailure", T, |p| {
            p.status
                .as_ref()
                .and_then(|s| s.last_failure.as_ref())
                .is_some_and(|f| f.reason == "RegistrationTimeout" && f.log_tail.is_some())
        })
        .await;
    let tail = p.status.and_then(|s| s.last_failure).and_then(|f| f.log_tail).unwrap();
    assert!(tail.ends_with("Waiting for the runner's session to be accepted..."), "{tail}");
    assert!(tail.contains("+ ./run.sh --jitconfig [REDACTED]"), "{tail}");
    let note = w.wait_warning("timeoutlog", "RunnerFailedLogs").await;
    assert!(
        note.contains("(RegistrationTimeout)") && note.contains("Waiting for the runner's session"),
        "{note}"
    );
    for s in w.sim.github.issued_secrets() {
        assert!(!note.contains(&s) && !tail.contains(&s), "a JIT config leaked");
    }
    w.stop().await;
}

/// A runner that registers and finishes its job (ephemeral, exit 0) is recycled without any
/// log read, and no `RunnerFailedLogs` Event or `lastFailure` appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_runner_is_recycled_without_reading_its_log() {
    let mut w = World::start("e2e-finishlog", 178).await;
    let first = w.apply_settled("finishlog", 1, 2).await;
    let (job, _) = w.busy_with_one_job("finishlog", 1.0).await;
    // Recycled: the job succeeded and the group that ran it is gone.
    let old = first.iter().next().unwrap().clone();
    w.wait_pool("finishlog", "its finished runner recycled", T, |_| {
        w.job(job.id).conclusion.is_some() && w.groups_of("finishlog").iter().all(|g| g.name != old)
    })
    .await;
    let now = w.wait_settled("finishlog", 1).await;
    assert!(now.is_disjoint(&first), "the runner was not recycled: {first:?} → {now:?}");
    assert_eq!(w.job(job.id).conclusion.as_deref(), Some("success"));
    assert!(w.sim.arm.calls().iter().all(|c| c.op != "logs"), "a log was read");
    let p = w.get_pool("finishlog").await.unwrap();
    assert!(p.status.as_ref().and_then(|s| s.last_failure.as_ref()).is_none(), "{:?}", p.status);
    assert!(w.warnings_of("finishlog").await.iter().all(|(_, r, _)| r != "RunnerFailedLogs"));
    w.stop().await;
}
