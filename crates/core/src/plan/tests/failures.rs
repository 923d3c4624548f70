//! Failures: counting, back-off, Stalled after repeats, recovery.
use super::*;

#[test]
fn failures_are_counted_once_per_group() {
    let mut fx = Fx::with_min_idle(1);
    let mut g = group("pool-bad01", ContainerState::Waiting { reason: Some("ErrImagePull".into()) }, 1);
    g.provisioning = GroupProvisioning::Failed;
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert_eq!(p.state.last_failure.as_ref().unwrap().reason, FailureReason::InvalidImage);
    assert!(has_event(&p, "ProvisioningFailed"));
    assert_eq!(p.status.failed, 1);
    fx.carry(&p, chrono::Duration::seconds(5));
    // The delete is still in progress: the same group is listed again.
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert!(!has_event(&p, "ProvisioningFailed"));
}

#[test]
fn registration_timeout_replaces_and_counts() {
    let mut fx = Fx::with_min_idle(1);
    fx.config.backoff_base = Duration::from_secs(30);
    // Running for 11 minutes (timeout 10m), no registration.
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 11)]);
    let p = fx.run();
    assert_eq!(
        destructive(&p),
        vec![&delete_unlisted_group("pool-slow1", RemovalReason::RegistrationTimeout)]
    );
    assert_eq!(p.state.last_failure.as_ref().unwrap().reason, FailureReason::RegistrationTimeout);
    // Replacement is held back by the backoff.
    assert!(creates(&p).is_empty());
    cond_is(&p, "Reconciling", "True", "Backoff");
    assert_eq!(p.state.backoff_until, Some(t0() + chrono::Duration::seconds(30)));

    // Offline registration of a timed-out group is removed first.
    let mut fx = Fx::new();
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 11)]);
    fx.runners = Ok(vec![offline_runner(3, "pool-slow1")]);
    let p = fx.run();
    assert_eq!(destructive(&p)[0], &unregister(3, "pool-slow1", RemovalReason::RegistrationTimeout));

    // Within the timeout: provisioning, requeue at the deadline at the latest.
    let mut fx = Fx::with_min_idle(1);
    fx.config.converging_requeue = Duration::from_secs(3600);
    fx.config.resync = Duration::from_secs(3600);
    fx.groups = Ok(vec![group("pool-slow1", ContainerState::Running, 4)]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.status.provisioning, 1);
    assert_eq!(p.requeue_after, Duration::from_secs(6 * 60));
}

#[test]
fn runner_that_went_offline_is_replaced_after_timeout_from_when_it_went_offline() {
    let mut fx = Fx::new();
    fx.groups = Ok(vec![group("pool-flap1", ContainerState::Running, 120)]);
    fx.runners = Ok(vec![offline_runner(4, "pool-flap1")]);
    fx.state.seen_online.insert("pool-flap1".into());
    let p = fx.run();
    assert!(destructive(&p).is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.offline_since.get("pool-flap1"), Some(&t0()));
    fx.carry(&p, mins(11));
    let p = fx.run();
    assert_eq!(destructive(&p).len(), 2);
}

#[test]
fn same_failure_three_times_stalls_with_its_reason() {
    let mut fx = Fx::with_min_idle(1);
    fx.config.backoff_base = Duration::from_secs(1);
    let mut p = fx.run();
    for round in 1..=3u32 {
        let name = creates(&p)[0].name().to_string();
        fx.carry(&p, chrono::Duration::seconds(10));
        fx.failures =
            vec![create_failure(&name, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage)];
        p = fx.run();
        assert!(creates(&p).is_empty(), "backoff holds creates back");
        if round < 3 {
            cond_is(&p, "Stalled", "False", "NotStalled");
        } else {
            cond_is(&p, "Stalled", "True", "InvalidImage");
            cond_is(&p, "Ready", "False", "InvalidImage");
            cond_is(&p, "Reconciling", "False", "Stalled");
            assert!(has_event(&p, "InvalidImage"));
            assert!(cond(&p, "Stalled").message.contains("3 time(s)"));
            assert_eq!(p.state.failures, 3);
            // Exponential backoff: 1s, 2s, 4s.
            assert_eq!(p.state.backoff_until, Some(fx.now + chrono::Duration::seconds(4)));
        }
        // Backoff over: a Stalled pool still retries slowly.
        fx.carry(&p, chrono::Duration::seconds(10));
        p = fx.run();
        assert_eq!(creates(&p).len(), 1, "round {round}");
    }
    cond_is(&p, "Stalled", "True", "InvalidImage");
    // A spec change (new generation) is the change a Stalled pool waits for.
    fx.carry(&p, chrono::Duration::seconds(1));
    fx.pool.generation = Some(2);
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
    assert_eq!(p.state.failures, 0);
}

#[test]
fn different_failures_do_not_stall_and_auth_stalls_at_once() {
    let mut fx = Fx::with_min_idle(0);
    fx.config.backoff_base = Duration::from_secs(1);
    for kind in [EdgeErrorKind::InvalidImage, EdgeErrorKind::InvalidRequest, EdgeErrorKind::InvalidImage] {
        fx.failures = vec![create_failure("pool-xxxxx", "westeurope", Priority::Regular, kind)];
        let p = fx.run();
        cond_is(&p, "Stalled", "False", "NotStalled");
        fx.carry(&p, mins(30));
    }
    fx.failures = vec![create_failure(
        "pool-xxxxy",
        "westeurope",
        Priority::Regular,
        EdgeErrorKind::Auth { permission: Some("administration:write".into()) },
    )];
    let p = fx.run();
    cond_is(&p, "Stalled", "True", "MissingPermission");
    assert!(has_event(&p, "AuthFailed"));
}

#[test]
fn transient_failures_back_off_but_never_stall() {
    let mut fx = Fx::with_min_idle(0);
    for _ in 0..6 {
        fx.failures =
            vec![create_failure("pool-xxxxx", "westeurope", Priority::Regular, EdgeErrorKind::Transient)];
        let p = fx.run();
        cond_is(&p, "Stalled", "False", "NotStalled");
        fx.carry(&p, chrono::Duration::hours(1));
    }
    assert_eq!(fx.state.failures, 6);
}

#[test]
fn success_resets_failure_memory() {
    let mut fx = Fx::new();
    fx.state.failures = 2;
    fx.state.backoff_until = Some(t0() + mins(5));
    fx.state.last_failure =
        Some(FailureRecord { reason: FailureReason::InvalidImage, message: "x".into(), count: 2, at: t0() });
    fx.groups = Ok(vec![running("pool-good1")]);
    fx.runners = Ok(vec![idle_runner(1, "pool-good1")]);
    let p = fx.run();
    assert_eq!(p.state.failures, 0);
    assert!(p.state.last_failure.is_none());
    assert_eq!(creates(&p).len(), 1);
}

#[test]
fn lost_in_flight_create_expires_and_counts() {
    let mut fx = Fx::with_min_idle(1);
    for n in ["pool-lost1", "pool-lost2"] {
        fx.state.in_flight.insert(
            n.into(),
            InFlight { since: t0() - mins(11), location: "westeurope".into(), priority: Priority::Regular },
        );
    }
    let p = fx.run();
    assert!(!p.state.in_flight.contains_key("pool-lost1"));
    assert_eq!(p.state.failures, 1);
    assert!(p.state.used_names.contains_key("pool-lost1"));
}

#[test]
fn failures_of_one_pass_count_once_per_reason() {
    let mut fx = Fx::with_min_idle(3);
    fx.failures = ["pool-x0001", "pool-x0002", "pool-x0003"]
        .iter()
        .map(|n| create_failure(n, "westeurope", Priority::Regular, EdgeErrorKind::InvalidImage))
        .chain(
            ["pool-x0004", "pool-x0005"]
                .iter()
                .map(|n| create_failure(n, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)),
        )
        .collect();
    let p = fx.run();
    assert_eq!(p.state.failures, 1);
    assert_eq!(p.state.last_failure.as_ref().unwrap().count, 1);
    assert_eq!(p.state.quota.as_ref().unwrap().attempts, 1);
    assert_eq!(p.events.iter().filter(|e| e.reason == "ProvisioningFailed").count(), 1);
    // Quota is what is reported (the image failure has not repeated yet).
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
}

#[test]
fn no_demand_clears_quota_and_failure_stall() {
    let mut fx = Fx::with_min_idle(0);
    fx.state.quota = Some(QuotaWait {
        until: t0() + mins(5),
        attempts: 2,
        message: "quota".into(),
        since: t0() - mins(1),
    });
    fx.state.last_failure = Some(FailureRecord {
        reason: FailureReason::InvalidImage,
        message: "image".into(),
        count: 5,
        at: t0() - mins(1),
    });
    fx.state.failures = 5;
    let p = fx.run();
    assert!(p.state.quota.is_none());
    assert!(p.state.last_failure.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
    cond_is(&p, "Ready", "True", "RunnersReady");
    // With demand, the stall stays.
    let mut fx2 = fx.clone();
    fx2.spec.scaling.min_idle = 1;
    let p = fx2.run();
    cond_is(&p, "Stalled", "True", "InvalidImage");
}

/// A finished runner whose group delete is denied (RBAC) pass after pass, 100 ms apart, for
/// 40 s; then the permission comes back and a job is queued. Found by the fault soak (seed 7):
/// the back-off had reached backoffMax, and the pool stayed Stalled with no create for 10
/// minutes after the permission came back.
#[test]
fn a_denied_removal_escalates_the_backoff_once_per_period_not_once_per_pass() {
    let mut fx = Fx::with_min_idle(1);
    fx.config.backoff_base = Duration::from_secs(10);
    fx.config.backoff_max = Duration::from_secs(600);
    let done = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 5);
    fx.groups = Ok(vec![running("pool-idle1"), done]);
    fx.runners = Ok(vec![idle_runner(1, "pool-idle1")]);
    let mut p = fx.run();
    let denied =
        EdgeErrorKind::Auth { permission: Some("Microsoft.ContainerInstance/containerGroups/delete".into()) };
    for _ in 0..400 {
        let delete: Vec<Action> = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::DeleteGroup { name, .. } if name == "pool-done1"))
            .cloned()
            .collect();
        assert_eq!(delete.len(), 1, "the removal is asked again every pass: {:?}", p.actions);
        fx.carry(&p, chrono::Duration::milliseconds(100));
        fx.failures = delete
            .into_iter()
            .map(|a| ActionFailure {
                action: a,
                error: EdgeError::new(denied.clone(), "denied"),
                registered_runner: None,
            })
            .collect();
        p = fx.run();
        cond_is(&p, "Stalled", "True", "MissingPermission");
    }
    // 40 s of denial: failures at 0, 10 and 30 s (back-off 10, 20, 40 s), not one per pass.
    assert!(p.state.failures <= 4, "failures {}", p.state.failures);
    let until = p.state.backoff_until.unwrap();
    assert!(until <= fx.now + chrono::Duration::seconds(80), "back-off until {until}, now {}", fx.now);

    // The permission is back: the delete succeeds (the group is gone); a job is queued. Once the
    // back-off has passed the pool creates, and it is no longer Stalled when the runner is online.
    fx.carry(&p, chrono::Duration::milliseconds(100));
    fx.groups = Ok(vec![running("pool-idle1")]);
    let job = QueuedJob { id: 77, labels: vec!["self-hosted".into(), "aci".into()], queued_at: fx.now };
    fx.jobs = vec![job];
    fx.runners = Ok(vec![busy_runner(1, "pool-idle1")]);
    let p = fx.run();
    fx.carry(&p, until - fx.now + chrono::Duration::seconds(1));
    let p = fx.run();
    let c = creates(&p);
    assert_eq!(c.len(), 1, "{:?}", p.actions);
    let name = c[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.jobs.clear();
    fx.groups = Ok(vec![running("pool-idle1"), running(&name)]);
    fx.runners = Ok(vec![busy_runner(1, "pool-idle1"), idle_runner(9, &name)]);
    let p = fx.run();
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn backoff_doubles_up_to_its_maximum_and_never_overflows() {
    let (base, max) = (Duration::from_secs(10), Duration::from_secs(600));
    let waits: Vec<u64> = (0..9).map(|a| backoff(base, max, a).as_secs()).collect();
    assert_eq!(waits, [10, 10, 20, 40, 80, 160, 320, 600, 600]);
    assert_eq!(backoff(base, max, u32::MAX), max);
    assert_eq!(backoff(Duration::MAX, Duration::MAX, u32::MAX), Duration::MAX);
}
