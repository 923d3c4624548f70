//! Status: condition transitions, usage, a restart resuming a stall.
use super::*;

fn stalled_status(reason: &str, message: &str, generation: i64) -> RunnerPoolStatus {
    let reason = ConditionReason::parse(reason).unwrap();
    let wanted = conditions::Conditions {
        ready: conditions::CondValue::new(false, reason, message),
        reconciling: conditions::CondValue::new(false, ConditionReason::Stalled, message),
        stalled: conditions::CondValue::new(true, reason, message),
    };
    RunnerPoolStatus {
        desired: 2,
        conditions: conditions::build(&[], &wanted, Some(generation), t0() - mins(10)),
        ..Default::default()
    }
}

#[test]
fn a_restart_resumes_a_stall_of_the_same_generation() {
    // Fresh memory (controller restart), the written status says Stalled InvalidImage.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.prev = Some(stalled_status(
        "InvalidImage",
        "creating runner pool-x1234: image refused (3 time(s) in a row; next attempt at 2026-01-01T11:51:00+00:00)",
        1,
    ));
    let p = fx.run();
    // Still Stalled (no flap, no new Warning), and the next attempt is made at once.
    cond_is(&p, "Stalled", "True", "InvalidImage");
    assert!(!has_event(&p, "InvalidImage"));
    assert_eq!(creates(&p).len(), 2);
    let c = cond(&p, "Stalled");
    assert_eq!(c.message.matches("time(s) in a row").count(), 1, "{}", c.message);
    // It fails the same way: still Stalled, and the backoff continues where it was.
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.failures = vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage)];
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "InvalidImage");
    assert_eq!(p.state.backoff_until, Some(fx.now + chrono::Duration::seconds(80)));

    // A spec changed while the controller was down is the change the stall waited for.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.pool.generation = Some(2);
    fx.prev = Some(stalled_status("InvalidImage", "image refused (3 time(s) in a row)", 1));
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");

    // Quota: Stalled until a create is accepted; one retry at once.
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.prev =
        Some(stalled_status("QuotaExceeded", "quota exceeded in westeurope: cores; next attempt at x", 1));
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    assert!(!creates(&p).is_empty());
    let names: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.groups = Ok(names.iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
}

/// A controller restarted while quota is short probes once at once; when that create is refused
/// too, the pool waits the base quota back-off, not a doubled one. Soak seeds 26 and 203 (quota of
/// one group per region, a controller SIGKILL) waited 120 s after the restart's probe and were
/// still waiting when the soak's settle window ended.
#[test]
fn a_refused_probe_after_a_restart_waits_the_base_quota_backoff() {
    let mut fx = Fx::new();
    fx.state = PoolState::default();
    fx.prev =
        Some(stalled_status("QuotaExceeded", "quota exceeded in westeurope: groups; next attempt at x", 1));
    let p = fx.run();
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(2));
    fx.failures = vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    let q = p.state.quota.clone().unwrap();
    assert_eq!(q.attempts, 1);
    assert_eq!(q.until, fx.now + chrono::Duration::from_std(fx.config.quota_backoff_base).unwrap());
    // The next refusal doubles it, as for a pool that was never restarted.
    fx.carry(&p, chrono::Duration::from_std(fx.config.quota_backoff_base).unwrap());
    let p = fx.run();
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(1));
    fx.failures = vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    let q = p.state.quota.clone().unwrap();
    assert_eq!(q.attempts, 2);
    assert_eq!(q.until, fx.now + chrono::Duration::from_std(fx.config.quota_backoff_base * 2).unwrap());
}

#[test]
fn last_transition_time_only_changes_on_flip() {
    let mut fx = Fx::new();
    let p1 = fx.run();
    let ready1 = cond(&p1, "Ready").last_transition_time.clone();
    fx.carry(&p1, mins(1));
    let p2 = fx.run();
    assert_eq!(cond(&p2, "Ready").last_transition_time, ready1);
    // Flip to Ready.
    let names: Vec<String> = p1.state.in_flight.keys().cloned().collect();
    fx.carry(&p2, mins(1));
    fx.groups = Ok(names.iter().map(|n| running(n)).collect());
    fx.runners = Ok(names.iter().enumerate().map(|(i, n)| idle_runner(i as u64, n)).collect());
    let p3 = fx.run();
    cond_is(&p3, "Ready", "True", "RunnersReady");
    assert_ne!(cond(&p3, "Ready").last_transition_time, ready1);
    assert_eq!(cond(&p3, "Stalled").last_transition_time, cond(&p1, "Stalled").last_transition_time);
    assert_eq!(cond(&p3, "Ready").observed_generation, Some(1));
}

#[test]
fn usage_accumulates_without_double_counting_after_restart() {
    let mut fx = Fx::with_min_idle(1);
    fx.config.prices = Some(PriceTable {
        currency: "USD".into(),
        regular_vcpu_second: 0.001,
        regular_gb_second: 0.0001,
        spot_vcpu_second: 0.0,
        spot_gb_second: 0.0,
    });
    fx.state.initialized = true;
    // Group created 11 minutes ago (container started 10m ago), 2 vCPU, 4 GB.
    fx.groups = Ok(vec![running("pool-use01")]);
    fx.runners = Ok(vec![idle_runner(1, "pool-use01")]);
    let mut g = fx.groups.as_ref().unwrap()[0].clone();
    g.created = Some(t0() - mins(10));
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    let u = p.status.usage.clone().unwrap();
    assert!((u.vcpu_seconds - 1200.0).abs() < 1e-6, "{u:?}");
    assert!((u.gb_seconds - 2400.0).abs() < 1e-6);
    assert!((u.estimated_cost.unwrap() - (1.2 + 0.24)).abs() < 1e-9);
    assert_eq!(u.currency.as_deref(), Some("USD"));
    fx.carry(&p, mins(1));
    let p = fx.run();
    let u2 = p.status.usage.clone().unwrap();
    assert!((u2.vcpu_seconds - 1320.0).abs() < 1e-6, "{u2:?}");
    // Restart: state lost → baseline only, nothing added twice.
    fx.carry(&p, mins(1));
    fx.state = PoolState::default();
    let p = fx.run();
    assert_eq!(p.status.usage.as_ref().unwrap().vcpu_seconds, u2.vcpu_seconds);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert!((p.status.usage.as_ref().unwrap().vcpu_seconds - (1320.0 + 120.0)).abs() < 1e-6);
    // A failed list keeps the last usage.
    let mut failed = fx.clone();
    failed.carry(&p, mins(1));
    failed.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "x"));
    let pf = failed.run();
    assert_eq!(pf.status.usage, p.status.usage);
}

/// A pool that reached generation 1: two idle runners online, status carried.
fn settled_fx() -> Fx {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![running("pool-aaaa1"), running("pool-aaaa2")]);
    fx.runners = Ok(vec![idle_runner(1, "pool-aaaa1"), idle_runner(2, "pool-aaaa2")]);
    let p = fx.run();
    cond_is(&p, "Reconciling", "False", "Converged");
    fx.carry(&p, chrono::Duration::seconds(30));
    fx
}

/// Flux's kstatus and Argo CD read `Reconciling=True` as "not done yet", so a busy, healthy pool
/// must not look unfinished: routine churn after the generation was reached keeps it False.
#[test]
fn routine_churn_of_a_settled_pool_is_steady_state_not_reconciling() {
    // An ephemeral runner finished its job: its group terminated, its registration gone.
    let mut fx = settled_fx();
    fx.groups = Ok(vec![
        group("pool-aaaa1", ContainerState::Terminated { exit_code: Some(0) }, 5),
        running("pool-aaaa2"),
    ]);
    fx.runners = Ok(vec![idle_runner(2, "pool-aaaa2")]);
    let p = fx.run();
    assert!(!creates(&p).is_empty() || p.actions.iter().any(|a| a.is_destructive()), "{:?}", p.actions);
    cond_is(&p, "Reconciling", "False", "SteadyState");
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!(cond(&p, "Ready").status, "False", "Ready still tells that not every runner is online");
    // Demand within maxRunners: three queued jobs raise desired; still steady.
    fx.carry(&p, chrono::Duration::seconds(30));
    fx.groups = Ok(vec![running("pool-aaaa2")]);
    fx.jobs = (1..=3).map(|id| QueuedJob { id, labels: vec!["aci".into()], queued_at: fx.now }).collect();
    let p = fx.run();
    assert!(!creates(&p).is_empty(), "{:?}", p.actions);
    cond_is(&p, "Reconciling", "False", "SteadyState");
    // The plan still asks to come back soon: steady churn is work in progress for the requeue.
    assert_eq!(p.requeue_after, PlannerConfig::default().converging_requeue);
}

#[test]
fn a_new_generation_or_a_shortfall_it_cannot_close_is_reconciling() {
    // A spec change: not done until the new generation is reached.
    let mut fx = settled_fx();
    fx.pool.generation = Some(2);
    fx.spec.scaling.min_idle = 3;
    let p = fx.run();
    cond_is(&p, "Reconciling", "True", "ScalingUp");
    assert_eq!(cond(&p, "Reconciling").observed_generation, Some(2));

    // Settled, then every location is cooling down: the controller cannot reach what it asks for.
    let mut fx = settled_fx();
    fx.runners = Ok(vec![idle_runner(1, "pool-aaaa1")]);
    fx.groups = Ok(vec![running("pool-aaaa1")]);
    fx.state.location_cooldown.insert("westeurope".into(), fx.now + mins(5));
    let p = fx.run();
    cond_is(&p, "Reconciling", "True", "CapacityUnavailable");

    // A stall cleared without a spec change (the Secret appeared): the pool must reach its
    // generation again before it is done.
    let mut fx = Fx::new();
    fx.prev = Some(stalled_status("SecretNotFound", "Secret gh-app not found", 1));
    let p = fx.run();
    cond_is(&p, "Reconciling", "True", "ScalingUp");
}

#[test]
fn a_generation_not_acted_on_yet_is_acknowledged_as_reconciling() {
    // A new pool: observedGeneration and Reconciling True at once.
    let s = acknowledge(None, Some(1), t0()).unwrap();
    assert_eq!(s.observed_generation, Some(1));
    let reasons: Vec<(&str, &str)> =
        s.conditions.iter().map(|c| (c.status.as_str(), c.reason.as_str())).collect();
    assert_eq!(reasons, [("False", "NewGeneration"), ("True", "NewGeneration"), ("False", "NotStalled")]);
    assert!(s.conditions.iter().all(|c| c.observed_generation == Some(1)));
    // Already of this generation: nothing to write.
    let p = settled_fx().run();
    assert_eq!(acknowledge(Some(&p.status), Some(1), t0()), None);
    // A changed spec: counts kept, a Stalled of the old generation cleared (the change may be the
    // one it waited for; the pass decides), Ready's transition time kept as it stays False.
    let stalled = stalled_status("InvalidImage", "image refused", 1);
    let s = acknowledge(Some(&stalled), Some(2), t0()).unwrap();
    assert_eq!((s.desired, s.observed_generation), (2, Some(2)));
    assert_eq!(conditions::find(&s.conditions, "Stalled").unwrap().status, "False");
    assert_eq!(
        conditions::find(&s.conditions, "Ready").unwrap().last_transition_time,
        conditions::find(&stalled.conditions, "Ready").unwrap().last_transition_time
    );
    // Without a generation (not served by the API server) nothing is acknowledged.
    assert_eq!(acknowledge(None, None, t0()), None);
}

/// GitHub publishes the date from which it refuses a runner version; the pinned default image
/// reaches it one day. From `deprecation_notice` (30 days) before that date, the pool gets one
/// Warning per version and process, naming the date and the field to change; a new version
/// warns again; a far date, or none, says nothing.
#[test]
fn a_runner_version_near_its_deprecation_warns_once_per_version() {
    let mut fx = Fx::new();
    let warned =
        |p: &Plan| p.events.iter().filter(|e| e.reason == EventReason::RunnerVersionDeprecated).count();
    fx.deprecation =
        Some(RunnerDeprecation { version: "2.300.0".into(), at: t0() + chrono::Duration::days(45) });
    let p = fx.run();
    assert_eq!(warned(&p), 0, "45 days ahead: not yet");
    fx.carry(&p, chrono::Duration::days(20));
    let p = fx.run();
    assert_eq!(warned(&p), 1, "25 days ahead");
    let e = p.events.iter().find(|e| e.reason == EventReason::RunnerVersionDeprecated).unwrap();
    assert_eq!(e.type_, EventType::Warning);
    assert!(e.message.contains("2.300.0") && e.message.contains("spec.runner.image"), "{}", e.message);
    fx.carry(&p, mins(1));
    assert_eq!(warned(&fx.run()), 0, "once per version");
    fx.deprecation =
        Some(RunnerDeprecation { version: "2.301.0".into(), at: t0() - chrono::Duration::days(1) });
    let p = fx.run();
    assert_eq!(warned(&p), 1, "another version, already past: warned");
    assert!(p.events.iter().any(|e| e.message.contains("since")));
    // A deleting pool is not warned.
    let mut fx = Fx::new();
    deleting(&mut fx, 0);
    fx.deprecation = Some(RunnerDeprecation { version: "2.300.0".into(), at: t0() });
    assert_eq!(warned(&fx.run()), 0);
}
