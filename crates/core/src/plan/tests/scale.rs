//! Scaling: desired, scale up and down, names, registration, the ports' filter.
use super::*;

#[test]
fn scale_up_from_empty_creates_min_idle_jit_runners() {
    let p = Fx::new().run();
    let c = creates(&p);
    assert_eq!(c.len(), 2);
    for a in &c {
        let Action::CreateRunner { name, location, priority, registration } = a else { unreachable!() };
        assert!(names::is_pool_runner_name("pool", name), "{name}");
        assert_eq!(location, "westeurope");
        assert_eq!(*priority, Priority::Regular);
        assert_eq!(registration, &RunnerRegistration::Jit { labels: own_labels(), runner_group: None });
    }
    assert_eq!(p.status.desired, 2);
    assert_eq!(p.status.provisioning, 2);
    assert_eq!(p.state.in_flight.len(), 2);
    assert!(has_event(&p, "ScaledUp"));
    cond_is(&p, "Ready", "False", "ScalingUp");
    cond_is(&p, "Reconciling", "True", "ScalingUp");
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!(p.status.observed_generation, Some(1));
    assert_eq!(p.status.scope.as_deref(), Some("org/acme"));
    assert!(p.requeue_after <= PlannerConfig::default().converging_requeue);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
}

#[test]
fn desired_formula_table() {
    // (busy, idle, minIdle, maxRunners, queued matching, queued other labels) -> (desired, creates)
    let cases = [
        (0, 0, 2, 5, 0, 0, 2, 2),
        (1, 0, 2, 5, 0, 0, 3, 2),
        (2, 2, 2, 5, 0, 0, 4, 0),
        (0, 0, 1, 5, 3, 0, 3, 3),
        (0, 0, 1, 5, 3, 4, 3, 3),
        (4, 0, 2, 5, 3, 0, 5, 1),
        (0, 0, 0, 5, 0, 0, 0, 0),
        (0, 0, 2, 10, 30, 0, 10, 10),
        (6, 0, 0, 5, 0, 0, 5, 0),
    ];
    for (i, (busy, idle, min_idle, max, queued, other, want_desired, want_creates)) in
        cases.into_iter().enumerate()
    {
        let mut fx = Fx::with_min_idle(min_idle);
        fx.spec.scaling.max_runners = max;
        let mut groups = Vec::new();
        let mut runners = Vec::new();
        for b in 0..busy {
            let n = format!("pool-busy{b}");
            groups.push(running(&n));
            runners.push(busy_runner(100 + b as u64, &n));
        }
        for b in 0..idle {
            let n = format!("pool-idle{b}");
            groups.push(running(&n));
            runners.push(idle_runner(200 + b as u64, &n));
        }
        fx.groups = Ok(groups);
        fx.runners = Ok(runners);
        for j in 0..queued {
            fx.jobs.push(QueuedJob {
                id: j,
                labels: vec!["self-hosted".into(), "aci".into()],
                queued_at: t0(),
            });
        }
        for j in 0..other {
            fx.jobs.push(QueuedJob { id: 1000 + j, labels: vec!["gpu".into()], queued_at: t0() });
        }
        let p = fx.run();
        assert_eq!(p.status.desired, want_desired, "case {i}");
        assert_eq!(creates(&p).len(), want_creates, "case {i}");
        assert!(destructive(&p).is_empty(), "case {i}: {:?}", p.actions);
    }
}

#[test]
fn job_label_matching_table() {
    let spec = spec_json(serde_json::json!({"github": {"labels": ["aci", "Big"]}}));
    let labels = demand::pool_label_set(&spec);
    let cases: &[(&[&str], bool)] = &[
        (&["self-hosted"], true),
        (&["self-hosted", "linux", "x64", "aci"], true),
        (&["Self-Hosted", "ACI", "big"], true),
        (&["self-hosted", "windows"], false),
        (&["ubuntu-latest"], false),
        (&["aci", "gpu"], false),
        (&["arm64"], false),
        (&[], false),
    ];
    for (job, want) in cases {
        let job: Vec<String> = job.iter().map(|s| s.to_string()).collect();
        assert_eq!(demand::job_matches(&labels, &job), *want, "{job:?}");
    }
    // TTL and duplicate ids.
    let now = t0();
    let jobs = vec![
        QueuedJob { id: 1, labels: vec!["aci".into()], queued_at: now - mins(5) },
        QueuedJob { id: 1, labels: vec!["aci".into()], queued_at: now - mins(5) },
        QueuedJob { id: 2, labels: vec!["aci".into()], queued_at: now - mins(120) },
    ];
    assert_eq!(demand::matching_queued(&spec, &jobs, now, Duration::from_secs(3600)), 1);
}

#[test]
fn in_flight_creates_count_toward_supply_and_clear_when_listed() {
    let mut fx = Fx::new();
    let p1 = fx.run();
    let names: Vec<String> = creates(&p1).iter().map(|a| a.name().to_string()).collect();
    fx.carry(&p1, chrono::Duration::seconds(10));
    // ARM list lags: nothing listed yet.
    let p2 = fx.run();
    assert!(creates(&p2).is_empty(), "{:?}", p2.actions);
    assert_eq!(p2.status.provisioning, 2);
    fx.carry(&p2, chrono::Duration::seconds(10));
    // Listed now (pending), runner not online yet.
    fx.groups = Ok(names.iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p3 = fx.run();
    assert!(p3.actions.is_empty(), "{:?}", p3.actions);
    assert!(p3.state.in_flight.is_empty());
    assert_eq!(p3.status.provisioning, 2);
    cond_is(&p3, "Reconciling", "True", "Provisioning");
    cond_is(&p3, "Ready", "False", "Provisioning");
}

/// minIdle 2 met: two running groups whose runners are online and idle.
fn two_idle_fx() -> Fx {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![running("pool-aaaa1"), running("pool-aaaa2")]);
    fx.runners = Ok(vec![idle_runner(1, "pool-aaaa1"), idle_runner(2, "pool-aaaa2")]);
    fx
}

#[test]
fn ready_when_idle_plus_busy_equals_desired() {
    let fx = two_idle_fx();
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    cond_is(&p, "Ready", "True", "RunnersReady");
    cond_is(&p, "Reconciling", "False", "Converged");
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!((p.status.idle, p.status.busy, p.status.desired), (2, 0, 2));
    assert!(has_event(&p, "RunnersReady"));
    assert_eq!(p.requeue_after, PlannerConfig::default().resync);
}

#[test]
fn scale_down_only_idle_past_delay_oldest_first_unregister_then_delete() {
    // minIdle 1, one busy → desired 2; four idle → surplus 3, but only two are past 5m.
    let fx = idle_fx(
        &[("pool-idle1", 1), ("pool-idle2", 20), ("pool-idle3", 6), ("pool-idle4", 2)],
        &["pool-busy1"],
        1,
    );
    let p = fx.run();
    assert_eq!(p.status.desired, 2);
    assert_eq!(
        p.actions,
        vec![
            unregister(11, "pool-idle2", RemovalReason::ScaleDown),
            delete_group("pool-idle2", RemovalReason::ScaleDown, Some(11)),
            unregister(12, "pool-idle3", RemovalReason::ScaleDown),
            delete_group("pool-idle3", RemovalReason::ScaleDown, Some(12)),
        ]
    );
    assert!(has_event(&p, "ScaledDown"));
    // Next due: pool-idle4 idle for 2m → 3m left.
    assert_eq!(p.requeue_after, PlannerConfig::default().converging_requeue);
    cond_is(&p, "Reconciling", "True", "ScalingDown");
}

#[test]
fn scale_down_waits_for_delay_and_requeues_at_due_time() {
    let fx = idle_fx(&[("pool-idle1", 1), ("pool-idle2", 3)], &[], 1);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.requeue_after, PlannerConfig::default().converging_requeue);
    let mut fx2 = fx.clone();
    fx2.config.converging_requeue = Duration::from_secs(3600);
    fx2.config.resync = Duration::from_secs(3600);
    let p2 = fx2.run();
    // pool-idle2 becomes removable 2 minutes from now.
    assert_eq!(p2.requeue_after, Duration::from_secs(120));
}

#[test]
fn min_idle_lowered_never_touches_busy_runners() {
    let fx = idle_fx(&[("pool-idle1", 30)], &["pool-busy1", "pool-busy2", "pool-busy3"], 0);
    let p = fx.run();
    assert_eq!(p.status.desired, 3);
    let touched: Vec<&str> = destructive(&p).iter().map(|a| a.name()).collect();
    assert_eq!(touched, vec!["pool-idle1", "pool-idle1"]);
}

#[test]
fn idle_since_is_tracked_and_reset_when_busy() {
    let mut fx = two_idle_fx();
    let p = fx.run();
    assert_eq!(p.state.idle_since.get("pool-aaaa1"), Some(&t0()));
    fx.carry(&p, mins(1));
    fx.runners = Ok(vec![busy_runner(1, "pool-aaaa1"), idle_runner(2, "pool-aaaa2")]);
    let p = fx.run();
    assert!(!p.state.idle_since.contains_key("pool-aaaa1"));
    assert_eq!(p.state.idle_since.get("pool-aaaa2"), Some(&t0()));
}

#[test]
fn token_mode_registration() {
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "github": {"organization": "acme", "runnerGroup": "ci", "labels": ["aci", "big"]},
        "runner": {"registration": {"mode": "token", "ephemeral": false}}
    }));
    let p = fx.run();
    let Action::CreateRunner { registration, .. } = creates(&p)[0] else { unreachable!() };
    assert_eq!(
        registration,
        &RunnerRegistration::Token {
            labels: vec!["aci".into(), "big".into(), install::owner_label(&install(), UID)],
            runner_group: Some("ci".into()),
            ephemeral: false
        }
    );
}

#[test]
fn names_are_never_reused() {
    let mut fx = Fx::with_min_idle(3);
    fx.groups = Ok(vec![group("pool-aaaaa", ContainerState::Waiting { reason: None }, 0)]);
    fx.runners = Ok(vec![offline_runner(1, "pool-aaaab")]);
    fx.state.used_names.insert("pool-aaaac".into(), t0() - mins(30));
    fx.state.in_flight.insert(
        "pool-aaaad".into(),
        InFlight { since: t0(), location: "westeurope".into(), priority: Priority::Regular },
    );
    let p = fx.run();
    let got: Vec<&str> = creates(&p).iter().map(|a| a.name()).collect();
    assert_eq!(got, vec!["pool-aaaae"]);
    // Names used long ago (beyond retention) may come back only if no list shows them.
    assert!(p.state.used_names.contains_key("pool-aaaae"));
}

#[test]
fn long_pool_names_give_valid_runner_names() {
    let mut fx = Fx::new();
    fx.pool.name = format!("{}.prod", "a".repeat(70));
    let p = fx.run();
    for a in creates(&p) {
        assert!(names::is_valid_group_name(a.name()), "{}", a.name());
        assert!(a.name().len() <= 63);
    }
}
