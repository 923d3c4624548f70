//! Observation: failed lists, bad input, unusable credentials, what the ports hand the planner.
use super::*;

#[test]
fn failed_list_deletes_nothing_and_keeps_counts() {
    for (groups_fail, runners_fail) in [(true, false), (false, true), (true, true)] {
        let mut fx = idle_fx(&[("pool-idle1", 60), ("pool-idle2", 60), ("pool-idle3", 60)], &[], 1);
        let mut done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
        done.failure = None;
        if let Ok(g) = fx.groups.as_mut() {
            g.push(done);
        }
        fx.prev = Some(RunnerPoolStatus { desired: 1, idle: 3, ..Default::default() });
        if groups_fail {
            fx.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "ARM 500"));
        }
        if runners_fail {
            fx.runners = Err(EdgeError::new(EdgeErrorKind::Transient, "GitHub 502"));
        }
        let p = fx.run();
        assert!(p.actions.is_empty(), "{groups_fail} {runners_fail}: {:?}", p.actions);
        assert_eq!((p.status.desired, p.status.idle), (1, 3));
        cond_is(&p, "Ready", "False", "ObservationFailed");
        cond_is(&p, "Reconciling", "True", "ObservationFailed");
        cond_is(&p, "Stalled", "False", "NotStalled");
    }
    let mut fx = Fx::new();
    fx.runners = Err(EdgeError::new(EdgeErrorKind::Auth { permission: None }, "401 Bad credentials"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Stalled", "True", "AuthFailed");
    assert!(has_event(&p, "AuthFailed"));
}

#[test]
fn bad_input_stalls_without_touching_anything() {
    let base = idle_fx(&[("pool-idle1", 60), ("pool-idle2", 60), ("pool-idle3", 60)], &[], 0);
    let mut invalid = base.clone();
    invalid.spec.runner.cpu = 64.0;
    let mut missing = base.clone();
    missing.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretNotFound,
        message: "Secret ns/gh-app not found".into(),
    };
    let mut key = base.clone();
    key.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretKeyMissing,
        message: "Secret ns/gh-app has no key privateKey".into(),
    };
    let mut pem = base.clone();
    pem.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::InvalidAppKey,
        message: "Secret ns/gh-app key privateKey is not a PEM RSA key".into(),
    };
    for (fx, reason) in [
        (invalid, "InvalidSpec"),
        (missing, "SecretNotFound"),
        (key, "SecretKeyMissing"),
        (pem, "InvalidAppKey"),
    ] {
        let p = fx.run();
        assert!(p.actions.is_empty(), "{reason}: {:?}", p.actions);
        cond_is(&p, "Stalled", "True", reason);
        cond_is(&p, "Ready", "False", reason);
        assert!(has_event(&p, reason), "{reason}: {:?}", p.events);
        // Event only on the transition.
        let mut again = fx.clone();
        again.carry(&p, mins(1));
        let p2 = again.run();
        assert!(!has_event(&p2, reason), "{reason}");
        assert_eq!(
            cond(&p2, "Stalled").last_transition_time,
            cond(&p, "Stalled").last_transition_time,
            "{reason}"
        );
    }
    // Transient Secret read error: not stalled, nothing done.
    let mut fx = base;
    fx.creds = CredentialStatus::Unavailable { message: "apiserver timeout".into() };
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Reconciling", "True", "CredentialsUnavailable");
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn unusable_credentials_are_not_reported_as_list_auth_failures() {
    let mut fx = Fx::new();
    let unusable = EdgeError::new(EdgeErrorKind::Auth { permission: None }, "credentials unavailable");
    fx.groups = Err(unusable.clone());
    fx.runners = Err(unusable);
    fx.creds = CredentialStatus::Unavailable { message: "apiserver timeout".into() };
    let p = fx.run();
    assert!(p.actions.is_empty());
    cond_is(&p, "Stalled", "False", "NotStalled");
    cond_is(&p, "Reconciling", "True", "CredentialsUnavailable");
    fx.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretKeyMissing,
        message: "Secret ns/gh-app has no key installationId".into(),
    };
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "SecretKeyMissing");
}

/// Shared lists of a resource group and a GitHub scope: this pool's groups and runners, an
/// older pool's, other pools' (one with this pool's runner-name shape), untagged ones.
fn shared_lists() -> (Vec<ObservedGroup>, Vec<ObservedRunner>) {
    let tagged = |name: &str, uid: &str, ns: &str, pool: &str, state| {
        let mut g = group(name, state, 20);
        g.pool_uid = Some(uid.into());
        g.pool_namespace = Some(ns.into());
        g.pool_name = Some(pool.into());
        g
    };
    let untagged = |name: &str| {
        let mut g = running(name);
        g.pool_uid = None;
        g.pool_namespace = None;
        g.pool_name = None;
        g
    };
    let mut done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
    if let Some(c) = done.container.as_mut() {
        c.finished_at = Some(t0() - mins(1));
    }
    let groups = vec![
        running("pool-idle1"),
        running("pool-busy1"),
        done,
        // An older pool of the same namespace and name (deleted and re-created).
        tagged("pool-old01", "uid-old", "ns", "pool", ContainerState::Running),
        // Another pool's groups, one of them with this pool's runner-name shape.
        tagged("other-aaaa1", "uid-other", "ns", "other", ContainerState::Running),
        tagged("pool-other", "uid-other", "ns", "other", ContainerState::Running),
        tagged("pool-zzzz1", "uid-other", "ns2", "pool", ContainerState::Running),
        // Not the controller's pool tags at all.
        untagged("pool-zzzz2"),
        untagged("build-box"),
    ];
    let mut foreign_labels = busy_runner(40, "other-aaaa1");
    foreign_labels.labels = vec!["self-hosted".into(), "gpu".into()];
    let runners = vec![
        idle_runner(1, "pool-idle1"),
        busy_runner(2, "pool-busy1"),
        offline_runner(3, "pool-done1"),
        idle_runner(4, "pool-old01"),
        offline_runner(5, "pool-gone1"),
        idle_runner(6, "pool-zzzz1"),
        idle_runner(7, "pool-zzzz2"),
        foreign_labels,
        idle_runner(41, "pool-other"),
        idle_runner(42, "laptop"),
    ];
    (groups, runners)
}

#[test]
fn the_ports_filter_drops_nothing_the_plan_looks_at() {
    // The reconcile pass reads only the groups and runners that concern the pool
    // (`names::group_concerns_pool`, `names::is_pool_runner_name`). Planning with the filtered
    // lists must give exactly the plan of the whole shared lists.
    let (all_groups, all_runners) = shared_lists();
    let prefix = names::runner_name_prefix("pool");
    let pool = Fx::new().pool;
    let concerns = |g: &ObservedGroup| names::group_concerns_pool(&pool, &prefix, g);
    let some_groups: Vec<ObservedGroup> = all_groups.iter().filter(|g| concerns(g)).cloned().collect();
    let some_runners: Vec<ObservedRunner> =
        all_runners.iter().filter(|r| names::is_pool_runner_name(&prefix, &r.name)).cloned().collect();
    assert!(some_groups.len() < all_groups.len() && some_runners.len() < all_runners.len());

    for (min_idle, deleting, after_grace) in
        [(1, false, false), (4, false, false), (0, false, true), (2, true, false), (0, true, true)]
    {
        let run = |groups: &[ObservedGroup], runners: &[ObservedRunner]| {
            let mut fx = Fx::with_min_idle(min_idle);
            fx.state.pending_unregister.insert(5, "pool-gone1".into());
            if deleting {
                fx.pool.deletion_timestamp = Some(t0() - mins(1));
            }
            fx.groups = Ok(groups.to_vec());
            fx.runners = Ok(runners.to_vec());
            let first = fx.run();
            if !after_grace {
                return first;
            }
            fx.carry(&first, chrono::Duration::minutes(30));
            fx.run()
        };
        let whole = run(&all_groups, &all_runners);
        let part = run(&some_groups, &some_runners);
        let ctx = format!("minIdle {min_idle} deleting {deleting} after grace {after_grace}");
        assert_eq!(whole.actions, part.actions, "{ctx}");
        assert_eq!(whole.status, part.status, "{ctx}");
        assert_eq!(whole.state, part.state, "{ctx}");
        assert_eq!(whole.finalizer, part.finalizer, "{ctx}");
    }
}

/// A pool refused by the tenant policy, as the controller hands it over: no credentials read,
/// no lists. It is Stalled `NotPermitted` naming the field, plans nothing, and its deletion is
/// blocked by that one reason until the attempts run out (no call made for its cleanup either).
#[test]
fn a_pool_outside_its_tenant_policy_stalls_and_plans_nothing() {
    let mut fx = idle_fx(&[("pool-idle1", 60)], &[], 2);
    let refused = crate::policy::NotPermitted {
        field: "spec.azure.subscriptionId".into(),
        message: "subscription 00000000-0000-0000-0000-0000000000bb is not allowed for namespace ns".into(),
    };
    fx.permission = Err(refused.clone());
    fx.creds = CredentialStatus::Unavailable { message: refused.to_string() };
    let unlisted = EdgeError::new(EdgeErrorKind::Auth { permission: None }, refused.to_string());
    fx.groups = Err(unlisted.clone());
    fx.runners = Err(unlisted);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    cond_is(&p, "Stalled", "True", "NotPermitted");
    cond_is(&p, "Ready", "False", "NotPermitted");
    assert!(cond(&p, "Stalled").message.contains("spec.azure.subscriptionId"), "{:?}", cond(&p, "Stalled"));
    assert!(has_event(&p, "NotPermitted"), "{:?}", p.events);

    let mut gone = fx.clone();
    deleting(&mut gone, 1);
    let mut attempts = 0;
    loop {
        let p = gone.run();
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        if p.finalizer == FinalizerDecision::Remove {
            break;
        }
        let ready = cond(&p, "Ready");
        assert_eq!(
            ready.message.matches("not permitted by the tenant policy").count(),
            1,
            "{}",
            ready.message
        );
        attempts += 1;
        assert!(attempts <= gone.config.deletion_max_attempts, "the finalizer is never released");
        gone.carry(&p, mins(10));
    }
    assert_eq!(attempts, gone.config.deletion_max_attempts - 1);
}
