//! Installs: another install's groups and registrations are never touched, counted or
//! collected; groups without install id are adopted only while their pool uid is live.
use super::*;

const OTHER: &str = "other-install";

fn other_install() -> install::InstallId {
    install::InstallId::parse(OTHER).unwrap()
}

/// A group of the same namespace/name and even the same pool uid, tagged by another install.
fn other_group(name: &str, state: ContainerState) -> ObservedGroup {
    let mut g = group(name, state, 30);
    g.install_id = Some(OTHER.into());
    g
}

/// A registration of another install's pool with the same name (same runner-name shape).
fn other_runner(id: u64, name: &str, online: bool, busy: bool) -> ObservedRunner {
    labelled(install::owner_label(&other_install(), "uid-of-their-pool"), id, name, online, busy)
}

/// Every kind of leftover another install may show in a shared subscription and org: its
/// finished, failed and idle groups (tagged with our pool's uid and name, even), a group of an
/// older pool with our namespace/name, idle and offline registrations with our name shape, and
/// a registration without any owner label and without a group of ours.
fn with_other_install(fx: &mut Fx) {
    let mut dead_same_name = other_group("pool-dead1", ContainerState::Running);
    dead_same_name.pool_uid = Some("uid-dead".into());
    let mut failed =
        other_group("pool-fail1", ContainerState::Waiting { reason: Some("ErrImagePull".into()) });
    failed.provisioning = GroupProvisioning::Failed;
    let groups = vec![
        other_group("pool-done1", ContainerState::Terminated { exit_code: Some(0) }),
        failed,
        other_group("pool-idle1", ContainerState::Running),
        other_group("pool-wait1", ContainerState::Waiting { reason: None }),
        dead_same_name,
    ];
    let runners = vec![
        other_runner(20, "pool-idle1", true, false),
        other_runner(21, "pool-dead1", true, false),
        other_runner(22, "pool-else1", true, false),
        other_runner(23, "pool-else2", false, false),
        other_runner(24, "pool-else3", true, true),
        unlabelled(25, "pool-lone1", false, false),
    ];
    fx.groups.as_mut().unwrap().extend(groups);
    fx.runners.as_mut().unwrap().extend(runners);
}

const OTHER_NAMES: [&str; 9] = [
    "pool-done1",
    "pool-fail1",
    "pool-idle1",
    "pool-wait1",
    "pool-dead1",
    "pool-else1",
    "pool-else2",
    "pool-else3",
    "pool-lone1",
];

fn assert_untouched(p: &Plan, what: &str) {
    for a in destructive(p) {
        assert!(!OTHER_NAMES.contains(&a.name()), "{what}: touched {a:?}");
    }
}

#[test]
fn another_installs_groups_and_registrations_are_never_touched_or_counted() {
    // Our pool: one idle runner beyond minIdle 0 (scaled down) and one finished (recycled), so
    // the passes below do remove things: only never the other install's.
    let mut fx = idle_fx(&[("pool-mine1", 60)], &[], 0);
    fx.groups.as_mut().unwrap().push(group(
        "pool-mine2",
        ContainerState::Terminated { exit_code: Some(0) },
        5,
    ));
    with_other_install(&mut fx);
    let mut removed = BTreeSet::new();
    for pass in 0..4 {
        let p = fx.run();
        assert_untouched(&p, &format!("pass {pass}"));
        removed.extend(destructive(&p).iter().map(|a| a.name().to_string()));
        if pass == 0 {
            // Counted: our idle runner only (the finished one is being recycled).
            assert_eq!((p.status.idle, p.status.busy, p.status.provisioning), (1, 0, 0), "{:?}", p.status);
        }
        fx.carry(&p, mins(5));
    }
    assert_eq!(
        removed,
        ["pool-mine1".to_string(), "pool-mine2".to_string()].into(),
        "the control removals happen"
    );
    // Being deleted, with either deletion policy.
    for orphan in [false, true] {
        let mut fx = idle_fx(&[("pool-mine1", 60)], &[], 0);
        with_other_install(&mut fx);
        deleting(&mut fx, 1);
        if orphan {
            fx.pool.annotations.insert(DELETION_POLICY_ANNOTATION.into(), DELETION_POLICY_ORPHAN.into());
        }
        for pass in 0..3 {
            let p = fx.run();
            assert_untouched(&p, &format!("deletion (orphan policy {orphan}) pass {pass}"));
            assert!(p.actions.iter().any(|a| a.name() == "pool-mine1") || pass > 0, "{:?}", p.actions);
            fx.carry(&p, mins(5));
        }
    }
}

#[test]
fn a_group_without_install_id_is_adopted_only_while_its_pool_uid_is_live() {
    let mut fx = Fx::with_min_idle(0);
    let legacy = |name: &str, uid: &str, state| {
        let mut g = group(name, state, 30);
        g.install_id = None;
        g.pool_uid = Some(uid.into());
        g
    };
    // Ours by pool uid: finished → recycled, like any of ours.
    let done = legacy("pool-old01", UID, ContainerState::Terminated { exit_code: Some(0) });
    // An older pool's with our namespace/name: its uid is not live here (it may be another
    // cluster's pool of the same name), so it is never collected; the tagged one is.
    let dead_legacy = legacy("pool-old02", "uid-dead", ContainerState::Running);
    let mut dead_ours = running("pool-old03");
    dead_ours.pool_uid = Some("uid-dead".into());
    fx.groups = Ok(vec![done, dead_legacy, dead_ours]);
    let p = fx.run();
    assert_eq!(destructive(&p), vec![&delete_group("pool-old01", RemovalReason::Recycled, None)]);
    fx.carry(&p, mins(5));
    fx.groups.as_mut().unwrap().retain(|g| g.name != "pool-old01");
    let p = fx.run();
    let names: Vec<&str> = destructive(&p).iter().map(|a| a.name()).collect();
    assert_eq!(names, vec!["pool-old03"], "{:?}", p.actions);
    // A legacy group of our pool's uid with an unlabelled registration is ours (idle, counted).
    let mut fx = Fx::with_min_idle(1);
    fx.groups = Ok(vec![legacy("pool-old04", UID, ContainerState::Running)]);
    fx.runners = Ok(vec![unlabelled(9, "pool-old04", true, false)]);
    let p = fx.run();
    assert_eq!(p.status.idle, 1);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn only_our_labelled_registrations_without_a_group_are_collected() {
    let mut fx = Fx::with_min_idle(0);
    fx.runners = Ok(vec![
        offline_runner(1, "pool-gone1"),
        other_runner(2, "pool-gone2", false, false),
        runner_of("uid-other-pool", 3, "pool-gone3", false, false),
    ]);
    fx.runners.as_mut().unwrap().push(unlabelled(4, "pool-gone4", false, false));
    let p = fx.run();
    fx.carry(&p, mins(5));
    let p = fx.run();
    assert_eq!(
        p.actions,
        vec![Action::UnregisterRunner {
            id: 1,
            name: "pool-gone1".into(),
            reason: RemovalReason::GarbageCollected
        }]
    );
}
