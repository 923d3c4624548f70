//! Deletion: drain, in-flight creates, orphan policy, bounded attempts, orphan groups.
use super::*;

#[test]
fn deletion_removes_idle_waits_for_busy_then_drains() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &["pool-busy1"], 2);
    fx.groups.as_mut().unwrap().push(group("pool-prov1", ContainerState::Waiting { reason: None }, 1));
    deleting(&mut fx, 10);
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            unregister(10, "pool-idle1", RemovalReason::PoolDeleted),
            delete_group("pool-idle1", RemovalReason::PoolDeleted, Some(10)),
            delete_unlisted_group("pool-prov1", RemovalReason::PoolDeleted),
        ]
    );
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert!(creates(&p).is_empty());
    cond_is(&p, "Ready", "False", "Deleting");
    cond_is(&p, "Reconciling", "True", "Deleting");
    assert!(cond(&p, "Ready").message.contains("draining"));
    // Busy runner still within drainTimeout (60m): waits; requeue at most the resync.
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![running("pool-busy1")]);
    fx.runners = Ok(vec![busy_runner(50, "pool-busy1")]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    cond_is(&p, "Reconciling", "True", "Draining");
    // drainTimeout passed: the group is deleted first, then the registration.
    fx.carry(&p, mins(60));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            delete_group("pool-busy1", RemovalReason::DrainTimeout, None),
            unregister(50, "pool-busy1", RemovalReason::DrainTimeout),
        ]
    );
    // Everything gone → finalizer removed.
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![]);
    fx.runners = Ok(vec![]);
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    assert!(has_event(&p, "CleanupComplete"));
}

#[test]
fn deletion_waits_for_in_flight_creates() {
    let mut fx = Fx::new();
    deleting(&mut fx, 0);
    fx.state.in_flight.insert(
        "pool-fly01".into(),
        InFlight { since: t0() - mins(1), location: "westeurope".into(), priority: Priority::Regular },
    );
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![group("pool-fly01", ContainerState::Waiting { reason: None }, 0)]);
    let p = fx.run();
    assert_eq!(p.actions, vec![delete_unlisted_group("pool-fly01", RemovalReason::PoolDeleted)]);
}

#[test]
fn deletion_with_orphan_policy_releases_groups() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &["pool-busy1"], 2);
    deleting(&mut fx, 0);
    fx.pool.annotations.insert(DELETION_POLICY_ANNOTATION.into(), "orphan".into());
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![
            Action::ReleaseGroup { name: "pool-idle1".into() },
            Action::ReleaseGroup { name: "pool-busy1".into() }
        ]
    );
    assert!(has_event(&p, "Orphaned"));
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    fx.groups = Ok(vec![]);
    // GitHub list failing does not matter with the orphan policy.
    fx.runners = Err(EdgeError::new(EdgeErrorKind::Transient, "502"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
}

#[test]
fn deletion_never_wedges() {
    let mut fx = idle_fx(&[("pool-idle1", 1)], &[], 1);
    deleting(&mut fx, 0);
    fx.config.deletion_max_attempts = 3;
    // First pass works and remembers what exists.
    let p = fx.run();
    fx.carry(&p, mins(1));
    fx.creds = CredentialStatus::Invalid {
        problem: CredentialProblem::SecretNotFound,
        message: "Secret ns/gh-app not found".into(),
    };
    let mut last = None;
    for attempt in 1..=3 {
        let p = fx.run();
        assert!(p.actions.is_empty());
        if attempt < 3 {
            assert_eq!(p.finalizer, FinalizerDecision::Keep, "attempt {attempt}");
        }
        fx.carry(&p, mins(1));
        last = Some(p);
    }
    let p = last.unwrap();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    // Attempts are spaced: many passes within the backoff count once.
    let mut burst = fx.clone();
    burst.state.deletion_attempts = 0;
    burst.state.deletion_last_attempt = None;
    for _ in 0..10 {
        let q = burst.run();
        assert_eq!(q.finalizer, FinalizerDecision::Keep);
        assert_eq!(q.state.deletion_attempts, 1);
        burst.carry(&q, chrono::Duration::seconds(1));
    }
    let warn = p.events.iter().find(|e| e.reason == "CleanupAbandoned").unwrap();
    assert_eq!(warn.type_, EventType::Warning);
    assert!(warn.message.contains("pool-idle1"), "{}", warn.message);
    assert!(warn.message.contains("Secret ns/gh-app not found"));

    // Failing deletes count too.
    let mut fx = idle_fx(&[("pool-idle1", 1)], &[], 1);
    deleting(&mut fx, 0);
    fx.config.deletion_max_attempts = 2;
    let fail = ActionFailure {
        action: delete_group("pool-idle1", RemovalReason::PoolDeleted, None),
        error: EdgeError::new(EdgeErrorKind::Transient, "ARM 500"),
        registered_runner: None,
    };
    fx.failures = vec![fail.clone()];
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert!(!p.actions.is_empty(), "retries while attempts remain");
    fx.carry(&p, mins(1));
    fx.failures = vec![fail];
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
}

#[test]
fn orphan_groups_of_deleted_pools() {
    let mut dead = running_of("gone-aaaaa", "uid-dead");
    dead.pool_name = Some("gone".into());
    let live = running_of("pool-aaaaa", UID);
    let renamed = running_of("pool-bbbbb", "uid-older");
    let busy = running_of("gone-bbbbb", "uid-dead");
    let mut untagged = running("x-ccccc");
    untagged.pool_uid = None;
    let groups: Vec<SweptGroup> = [dead, live, renamed, busy, untagged]
        .into_iter()
        .map(|group| SweptGroup { resource_group: "rg".into(), group })
        .collect();
    let live_uids: BTreeSet<String> = [UID.to_string()].into();
    let live_pools: BTreeSet<(String, String)> = [("ns".to_string(), "pool".to_string())].into();
    let placements: BTreeMap<String, (String, String)> =
        [(UID.to_string(), ("sub".to_string(), "rg".to_string()))].into();
    let busy_names: BTreeSet<String> = ["gone-bbbbb".to_string()].into();
    let marks = BTreeMap::new();
    let me = install();
    let mk =
        |groups: Result<&[SweptGroup], EdgeError>, marks: &BTreeMap<(String, String), DateTime<Utc>>, now| {
            plan_orphan_groups(&OrphanInput {
                install: &me,
                subscription: "sub",
                groups,
                live_pool_uids: &live_uids,
                live_pools: &live_pools,
                placements: &placements,
                busy_runners: &busy_names,
                registration_labels: &BTreeMap::new(),
                marks,
                grace: Duration::from_secs(120),
                now,
            })
        };
    let p1 = mk(Ok(&groups), &marks, t0());
    assert!(p1.deletes.is_empty());
    assert_eq!(p1.marks.keys().collect::<Vec<_>>(), vec![&("rg".to_string(), "gone-aaaaa".to_string())]);
    assert_eq!(p1.requeue_after, Some(Duration::from_secs(120)));
    let failed = mk(Err(EdgeError::new(EdgeErrorKind::Transient, "x")), &p1.marks, t0() + mins(5));
    assert!(failed.deletes.is_empty());
    assert_eq!(failed.marks, p1.marks);
    let p2 = mk(Ok(&groups), &p1.marks, t0() + mins(2));
    assert_eq!(
        p2.deletes,
        vec![SweepDelete { resource_group: "rg".into(), name: "gone-aaaaa".into(), stranded_from: None }]
    );
    assert_eq!(p2.events.len(), 1);
}

#[test]
fn deletion_stuck_in_deleting_is_bounded() {
    let mut fx = Fx::new();
    fx.pool.deletion_timestamp = Some(t0());
    fx.config.deletion_max_attempts = 2;
    let mut g = running("pool-stuck");
    g.provisioning = GroupProvisioning::Deleting;
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert_eq!(p.state.deletion_attempts, 0);
    // drainTimeout (60m) + deletion grace (30m) later, passes count as failed attempts.
    fx.carry(&p, mins(90));
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    let warn = p.events.iter().find(|e| e.reason == "CleanupAbandoned").unwrap();
    assert!(warn.message.contains("pool-stuck"), "{}", warn.message);
}

/// A controller that has just started (or just taken the Lease) does not know what the process
/// before it had on the wire: a create that ARM received from a process killed mid-request
/// lands after it, and a finalizer removed on the strength of an empty list would leave that
/// group and its registration behind. So an empty list finishes the deletion only once
/// `predecessor_writes` has passed since this process began acting, unless the pool was created
/// after that (then no earlier process acted on it). The orphan policy waits the same way.
#[test]
fn a_fresh_process_finishes_a_deletion_only_after_a_predecessors_writes_can_have_landed() {
    let mut fx = Fx::new();
    deleting(&mut fx, 1);
    fx.acting_since = t0() - secs(10);
    fx.pool.created = Some(t0() - mins(30));
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Keep);
    assert!(p.actions.is_empty());
    assert!(!has_event(&p, "CleanupComplete"));
    assert!(
        cond(&p, "Ready").message.contains("previous controller process"),
        "{}",
        cond(&p, "Ready").message
    );
    let until = fx.acting_since + chrono::Duration::seconds(60);
    assert!(p.requeue_after <= Duration::from_secs(50), "woken when the window ends: {:?}", p.requeue_after);

    // A group of the predecessor's create shows up within the window: it is removed as usual.
    fx.carry(&p, secs(20));
    fx.groups = Ok(vec![group("pool-late1", ContainerState::Waiting { reason: None }, 1)]);
    let p = fx.run();
    assert_eq!(p.actions, vec![delete_unlisted_group("pool-late1", RemovalReason::PoolDeleted)]);
    assert_eq!(p.finalizer, FinalizerDecision::Keep);

    // Gone, and the window over: done.
    fx.carry(&p, secs(40));
    assert!(fx.now >= until);
    fx.groups = Ok(vec![]);
    let p = fx.run();
    assert_eq!(p.finalizer, FinalizerDecision::Remove);
    assert!(has_event(&p, "CleanupComplete"));

    // A pool younger than the process: nothing of a predecessor can concern it.
    let mut fx = Fx::new();
    deleting(&mut fx, 0);
    fx.acting_since = t0() - secs(10);
    fx.pool.created = Some(t0() - secs(5));
    assert_eq!(fx.run().finalizer, FinalizerDecision::Remove);
    // An unknown creation time counts as older.
    fx.pool.created = None;
    assert_eq!(fx.run().finalizer, FinalizerDecision::Keep);

    // The orphan policy releases nothing it has not seen, so it waits the same way.
    fx.pool.annotations.insert(DELETION_POLICY_ANNOTATION.into(), DELETION_POLICY_ORPHAN.into());
    assert_eq!(fx.run().finalizer, FinalizerDecision::Keep);
    fx.acting_since = t0() - mins(2);
    assert_eq!(fx.run().finalizer, FinalizerDecision::Remove);
}

/// A delete guarded by `only_if_unlisted` that the executor did not send (a fresh runner list
/// showed the group's runner, registered after the pass's list: a persistent runner restarted
/// by ACI) comes back as a Conflict, and the next pass decides about the group from scratch:
/// unregister, then delete. Without that report the group counted as "removal in progress" for
/// `removal_ttl` (180 s) and the pool's deletion stood still that long with an idle runner and
/// its group in place (soak seeds 449 and 518: the cleanup window ran out).
#[test]
fn a_delete_skipped_for_a_late_registration_is_decided_again_at_once() {
    let mut fx = Fx::new();
    deleting(&mut fx, 0);
    fx.groups = Ok(vec![running("pool-late1")]);
    let p = fx.run();
    assert_eq!(p.actions, vec![delete_unlisted_group("pool-late1", RemovalReason::PoolDeleted)]);
    let skipped = ActionFailure {
        action: p.actions[0].clone(),
        error: EdgeError::new(EdgeErrorKind::Conflict, "registered after the list"),
        registered_runner: None,
    };

    // Next pass: the registration is listed now.
    let next = |fx: &mut Fx, failures: Vec<ActionFailure>| {
        fx.carry(&p, chrono::Duration::seconds(2));
        fx.runners = Ok(vec![idle_runner(7, "pool-late1")]);
        fx.failures = failures;
        fx.run()
    };
    let mut reported = fx.clone();
    let p2 = next(&mut reported, vec![skipped]);
    assert_eq!(
        p2.actions,
        vec![
            unregister(7, "pool-late1", RemovalReason::PoolDeleted),
            delete_group("pool-late1", RemovalReason::PoolDeleted, Some(7)),
        ]
    );
    // Unreported, the skipped delete would hold the group as terminating.
    let p2 = next(&mut fx, vec![]);
    assert!(p2.actions.is_empty(), "{:?}", p2.actions);
}
