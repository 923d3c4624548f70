//! Cleanup: recycle, GC, stale groups, failed JIT creates, removals in progress.
use super::*;

#[test]
fn recycle_table() {
    // (container state, restart count, registration) -> (actions, failure counted)
    let term = |c| ContainerState::Terminated { exit_code: Some(c) };
    type Case = (ContainerState, i32, Option<(bool, bool)>, bool, Vec<Action>, bool);
    let unreg = |r| Action::UnregisterRunner { id: 7, name: "pool-done1".into(), reason: r };
    let del = |r| delete_group("pool-done1", r, None);
    let del_after_unreg = |r| delete_group("pool-done1", r, Some(7));
    let cases: Vec<Case> = vec![
        // exit 0, registration gone (ephemeral runner removed itself) → delete group only.
        (term(0), 0, None, true, vec![del(RemovalReason::Recycled)], false),
        // exit 0 of an ephemeral runner, registration still listed (the list predates GitHub
        // removing it) → delete the group only; GitHub removes the registration itself.
        (term(0), 0, Some((false, false)), true, vec![del(RemovalReason::Recycled)], false),
        (term(0), 0, Some((true, false)), true, vec![del(RemovalReason::Recycled)], false),
        // crash after having been online: recycled, not a provisioning failure.
        (term(1), 0, None, true, vec![del(RemovalReason::Crashed)], false),
        // crash before ever coming online: provisioning failure.
        (term(1), 0, None, false, vec![del(RemovalReason::Crashed)], true),
        // restarted container counts as crashed.
        (
            ContainerState::Running,
            2,
            Some((false, false)),
            false,
            vec![unreg(RemovalReason::Crashed), del_after_unreg(RemovalReason::Crashed)],
            true,
        ),
        // busy registration: never touched, even with a terminated container.
        (term(0), 0, Some((true, true)), true, vec![], false),
    ];
    for (i, (state, restarts, reg, seen, want, counted)) in cases.into_iter().enumerate() {
        let mut fx = Fx::with_min_idle(0);
        let mut g = group("pool-done1", state, 10);
        if let Some(c) = g.container.as_mut() {
            c.restart_count = restarts;
            c.finished_at = Some(t0() - mins(1));
        }
        fx.groups = Ok(vec![g]);
        fx.runners =
            Ok(reg.map(|(online, busy)| vec![runner(7, "pool-done1", online, busy)]).unwrap_or_default());
        if seen {
            fx.state.seen_online.insert("pool-done1".into());
        }
        let p = fx.run();
        let got: Vec<Action> = p.actions.iter().filter(|a| a.is_destructive()).cloned().collect();
        assert_eq!(got, want, "case {i}");
        assert_eq!(p.state.failures > 0, counted, "case {i}");
        if !want.is_empty() {
            assert!(has_event(&p, "RunnerRecycled"), "case {i}");
        }
    }
}

/// A pool of persistent runners (token mode, not ephemeral) of the org `acme`.
fn persistent_fx(min_idle: i32) -> Fx {
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "github": {"organization": "acme"},
        "runner": {"registration": {"mode": "token", "ephemeral": false}},
        "scaling": {"minIdle": min_idle}
    }));
    fx
}

#[test]
fn finished_persistent_runner_is_unregistered_and_lingering_ephemeral_registration_collected() {
    // A persistent (token mode, not ephemeral) runner that exited 0 keeps its registration:
    // the controller unregisters it before deleting the group.
    let mut fx = persistent_fx(0);
    let mut g = group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }, 10);
    if let Some(c) = g.container.as_mut() {
        c.finished_at = Some(t0() - mins(1));
    }
    fx.groups = Ok(vec![g]);
    fx.runners = Ok(vec![offline_runner(7, "pool-done1")]);
    fx.state.seen_online.insert("pool-done1".into());
    let p = fx.run();
    let got: Vec<Action> = p.actions.iter().filter(|a| a.is_destructive()).cloned().collect();
    assert_eq!(
        got,
        vec![
            unregister(7, "pool-done1", RemovalReason::Recycled),
            delete_group("pool-done1", RemovalReason::Recycled, Some(7)),
        ]
    );

    // An ephemeral runner's registration that outlives its deleted group is an offline
    // registration without a group: collected once confirmed after gcGrace, never leaked.
    let mut fx = Fx::with_min_idle(0);
    fx.runners = Ok(vec![offline_runner(7, "pool-done1")]);
    let first = fx.run();
    assert!(!first.actions.iter().any(Action::is_destructive), "not before the grace period");
    let mut fx2 = Fx::new();
    fx2.spec.scaling.min_idle = 0;
    fx2.runners = Ok(vec![offline_runner(7, "pool-done1")]);
    fx2.state = first.state.clone();
    fx2.now = t0() + fx2.config.gc_grace + mins(1);
    let later = fx2.run();
    assert!(later.actions.contains(&unregister(7, "pool-done1", RemovalReason::GarbageCollected)));
}

#[test]
fn gc_offline_registration_mark_then_confirm() {
    let mut fx = Fx::with_min_idle(0);
    fx.runners = Ok(vec![
        offline_runner(9, "pool-gone1"),
        // Not ours: other prefix, or our prefix without the pool label, or busy.
        offline_runner(10, "other-gone1"),
        ObservedRunner { labels: vec!["self-hosted".into()], ..offline_runner(11, "pool-gone2") },
        runner(12, "pool-busy9", false, true),
    ]);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.gc_marks.get(&GcKey::Runner(9)), Some(&t0()));
    assert_eq!(p.state.gc_marks.len(), 1);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert!(p.actions.is_empty(), "grace not over: {:?}", p.actions);
    fx.carry(&p, mins(1));
    let p = fx.run();
    assert_eq!(p.actions, vec![unregister(9, "pool-gone1", RemovalReason::GarbageCollected)]);
    assert!(has_event(&p, "GarbageCollected"));
}

#[test]
fn gc_mark_is_dropped_when_candidate_recovers_and_failed_list_keeps_marks() {
    let mut fx = Fx::with_min_idle(0);
    fx.runners = Ok(vec![offline_runner(9, "pool-gone1")]);
    let p = fx.run();
    fx.carry(&p, mins(1));
    // A failed list: no action, marks kept.
    fx.groups = Err(EdgeError::new(EdgeErrorKind::Transient, "ARM 503"));
    let p = fx.run();
    assert!(p.actions.is_empty());
    assert_eq!(p.state.gc_marks.len(), 1);
    fx.carry(&p, mins(5));
    // Now the group shows up: no longer a candidate.
    fx.groups = Ok(vec![group("pool-gone1", ContainerState::Running, 1)]);
    let p = fx.run();
    assert!(destructive(&p).is_empty(), "{:?}", p.actions);
    assert!(p.state.gc_marks.is_empty());
}

#[test]
fn stale_group_of_older_pool_with_same_name_is_collected() {
    let mut fx = Fx::with_min_idle(0);
    let old = running_of("pool-old01", "uid-dead");
    let other_live = running_of("pool-live1", "uid-other");
    fx.live.insert("uid-other".into());
    let busy_old = running_of("pool-old02", "uid-dead");
    fx.groups = Ok(vec![old, other_live, busy_old]);
    fx.runners = Ok(vec![
        runner_of("uid-dead", 5, "pool-old01", false, false),
        runner_of("uid-dead", 6, "pool-old02", true, true),
    ]);
    let p = confirmed_pass(&mut fx);
    assert_eq!(p.actions, orphan_removal(5, "pool-old01", Some(5)));
}

#[test]
fn stale_group_of_an_online_runner_is_deleted_only_if_its_unregister_succeeds() {
    // The lists may be cached: an online runner shown idle may just have taken a job. GitHub
    // refuses to unregister a busy runner, and then its group must stay.
    let mut fx = Fx::with_min_idle(0);
    let old = running_of("pool-old01", "uid-dead");
    fx.groups = Ok(vec![old]);
    fx.runners = Ok(vec![runner_of("uid-dead", 5, "pool-old01", true, false)]);
    let p = confirmed_pass(&mut fx);
    assert_eq!(p.actions, orphan_removal(5, "pool-old01", Some(5)));
}

/// A pass that only marks stale groups, then the pass after the mark is confirmed.
fn confirmed_pass(fx: &mut Fx) -> Plan {
    let p = fx.run();
    assert!(p.actions.is_empty(), "the first pass only marks: {:?}", p.actions);
    fx.carry(&p, mins(3));
    fx.run()
}

/// Unregister then delete of the orphaned runner `name`, the delete guarded by `guard`.
fn orphan_removal(id: u64, name: &str, guard: Option<u64>) -> Vec<Action> {
    vec![unregister(id, name, RemovalReason::Orphaned), delete_group(name, RemovalReason::Orphaned, guard)]
}

#[test]
fn jit_registration_of_failed_create_is_unregistered() {
    let mut fx = Fx::with_min_idle(0);
    let mut f = create_failure("pool-aaaaa", "westeurope", Priority::Regular, EdgeErrorKind::Transient);
    f.registered_runner = Some(77);
    fx.failures = vec![f];
    fx.runners = Ok(vec![offline_runner(77, "pool-aaaaa")]);
    let p = fx.run();
    assert_eq!(p.actions, vec![unregister(77, "pool-aaaaa", RemovalReason::CreateFailed)]);
    // When it is gone, it is forgotten.
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.runners = Ok(vec![]);
    let p = fx.run();
    assert!(p.state.pending_unregister.is_empty());
    assert!(p.actions.is_empty());
}

#[test]
fn removals_are_not_repeated_or_misread_while_lists_lag() {
    // Scale-down of an idle runner; the (cached) lists still show the group afterwards, and the
    // registration is gone: it must not look like a registration timeout.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    assert_eq!(destructive(&p).len(), 2);
    let removed = destructive(&p)[0].name().to_string();
    assert!(p.state.removing.contains_key(&removed));
    fx.carry(&p, mins(1));
    let keep: Vec<ObservedRunner> =
        fx.runners.as_ref().unwrap().iter().filter(|r| r.name != removed).cloned().collect();
    fx.runners = Ok(keep);
    let p = fx.run();
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.state.failures, 0);
    assert_eq!((p.status.idle, p.status.terminating), (1, 1));
    // Still listed after removal_ttl: asked again.
    fx.carry(&p, mins(3));
    let p = fx.run();
    assert_eq!(destructive(&p), vec![&delete_unlisted_group(&removed, RemovalReason::ScaleDown)]);
    assert_eq!(p.state.failures, 0);
    // Gone from the lists: forgotten.
    fx.carry(&p, mins(1));
    fx.groups = Ok(fx.groups.as_ref().unwrap().iter().filter(|g| g.name != removed).cloned().collect());
    let p = fx.run();
    assert!(!p.state.removing.contains_key(&removed));

    // A failed delete is asked again at once.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    let actions = p.actions.clone();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![ActionFailure {
        action: actions[1].clone(),
        error: EdgeError::new(EdgeErrorKind::Transient, "ARM 500"),
        registered_runner: None,
    }];
    let p = fx.run();
    let again: Vec<&Action> = destructive(&p).into_iter().filter(|a| a.name() == actions[1].name()).collect();
    assert!(!again.is_empty(), "{:?}", p.actions);
    assert!(
        again.iter().all(|a| matches!(
            a,
            Action::DeleteGroup { reason: RemovalReason::ScaleDown, .. }
                | Action::UnregisterRunner { reason: RemovalReason::ScaleDown, .. }
        )),
        "{again:?}"
    );
    // GitHub refusing the unregister (busy): the decision is dropped, and the busy runner kept.
    let mut fx = idle_fx(&[("pool-idle1", 30), ("pool-idle2", 30)], &[], 1);
    let p = fx.run();
    let unreg = p.actions[0].clone();
    let name = unreg.name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![ActionFailure {
        action: unreg,
        error: EdgeError::new(EdgeErrorKind::Conflict, "runner is busy"),
        registered_runner: None,
    }];
    let runners: Vec<ObservedRunner> = fx
        .runners
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| if r.name == name { ObservedRunner { busy: true, ..r.clone() } } else { r.clone() })
        .collect();
    fx.runners = Ok(runners);
    let p = fx.run();
    assert!(!p.state.removing.contains_key(&name));
    assert!(p.actions.iter().all(|a| a.name() != name), "{:?}", p.actions);
    assert_eq!(p.status.busy, 1);
}

/// The pool's only group `name`: its container restarted after its runner was seen online.
fn restarted_after_online(fx: &mut Fx, name: &str) {
    let mut g = running(name);
    if let Some(c) = g.container.as_mut() {
        c.restart_count = 1;
    }
    fx.groups = Ok(vec![g]);
    fx.state.seen_online.insert(name.into());
}

/// restartPolicy Always: the runner died under a job (seen online before), its container
/// restarted and runs again. Found by the fault soak (seed 38): on a runner list that still
/// showed the old registration offline, the group was deleted while the re-registered runner
/// was running the next job.
#[test]
fn a_restarted_persistent_runner_is_never_removed_under_a_job_it_may_have_taken() {
    let mut fx = persistent_fx(1);
    restarted_after_online(&mut fx, "pool-back1");
    // The list (stale) shows the old registration offline: wait for it, remove nothing.
    fx.runners = Ok(vec![offline_runner(7, "pool-back1")]);
    let p = fx.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    // Back online (a new registration of the same name): healed by ACI's restart, kept and
    // counted idle; nothing removed (a newer registration may take a job at any moment).
    fx.carry(&p, chrono::Duration::seconds(2));
    fx.runners = Ok(vec![idle_runner(8, "pool-back1")]);
    let p = fx.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    assert_eq!(p.status.idle, 1);
    // Never back within registrationTimeout: removed as timed out.
    let mut fx2 = Fx::new();
    fx2.spec = fx.spec.clone();
    restarted_after_online(&mut fx2, "pool-gone1");
    fx2.runners = Ok(vec![offline_runner(9, "pool-gone1")]);
    let p = fx2.run();
    assert!(!p.actions.iter().any(Action::is_destructive), "{:?}", p.actions);
    fx2.carry(&p, chrono::Duration::minutes(10));
    let p = fx2.run();
    assert!(
        p.actions.iter().any(|a| matches!(a, Action::DeleteGroup { name, reason: RemovalReason::RegistrationTimeout, .. } if name == "pool-gone1")),
        "{:?}",
        p.actions
    );
}

/// Soak seed 126: a persistent (token-mode) runner's container crashed before registering and
/// ACI restarted it (restart policy Always); the pass's runner list, read before the restart
/// registered, showed no registration, and the group was deleted under the job the restarted
/// runner had just taken. Seed 122 is the registration-timeout twin. A group whose container
/// can still run and whose registration is not listed is deleted only if a runner list read at
/// execution shows none.
#[test]
fn a_group_that_can_still_run_is_deleted_only_if_a_fresh_list_shows_no_registration() {
    let mut fx = Fx::new();
    fx.spec = spec_json(serde_json::json!({
        "runner": {"registration": {"mode": "token", "ephemeral": false}},
        "scaling": {"minIdle": 0}
    }));
    let mut g = group("pool-rstr1", ContainerState::Running, 1);
    if let Some(c) = g.container.as_mut() {
        c.restart_count = 1;
    }
    fx.groups = Ok(vec![g]);
    let p = fx.run();
    let deletes: Vec<&Action> = destructive(&p);
    assert_eq!(
        deletes,
        vec![&delete_unlisted_group("pool-rstr1", RemovalReason::Crashed)],
        "{:?}",
        p.actions
    );
    // Listed (it registered): the delete waits for its unregister instead.
    fx.runners = Ok(vec![idle_runner(9, "pool-rstr1")]);
    let p = fx.run();
    assert!(
        destructive(&p).iter().all(|a| match a {
            Action::DeleteGroup { only_if_unregistered, only_if_unlisted, .. } =>
                *only_if_unregistered == Some(9) && !only_if_unlisted,
            _ => true,
        }),
        "{:?}",
        p.actions
    );
    // An ephemeral runner's terminated container (restart policy Never) runs nothing any more.
    let mut fx = Fx::with_min_idle(0);
    fx.groups = Ok(vec![group("pool-done9", ContainerState::Terminated { exit_code: Some(1) }, 5)]);
    let p = fx.run();
    assert!(
        destructive(&p).iter().all(|a| !matches!(a, Action::DeleteGroup { only_if_unlisted: true, .. })),
        "{:?}",
        p.actions
    );
    assert!(!destructive(&p).is_empty(), "{:?}", p.actions);
}
