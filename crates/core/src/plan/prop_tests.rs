//! Seeded random observed states, checked against the planner's invariants.
use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::{Fx, INSTALL, UID, counter_suffixes, install, mins, t0};

/// Another controller's install id (a second cluster on the same subscription and org).
const OTHER_INSTALL: &str = "other-install";
use super::*;
use crate::crd::Priority;

fn random_name(rng: &mut StdRng, prefix: &str) -> String {
    format!("{prefix}-{}", names::random_suffix(rng))
}

fn random_container(rng: &mut StdRng) -> Option<ObservedContainer> {
    let state = match rng.gen_range(0..5) {
        0 => return None,
        1 => ContainerState::Waiting {
            reason: if rng.gen_bool(0.3) { Some("ErrImagePull".into()) } else { None },
        },
        2 => ContainerState::Terminated { exit_code: Some(rng.gen_range(0..3)) },
        _ => ContainerState::Running,
    };
    Some(ObservedContainer {
        state,
        started_at: Some(t0() - mins(rng.gen_range(0..40))),
        finished_at: if rng.gen_bool(0.5) { Some(t0() - mins(rng.gen_range(0..5))) } else { None },
        restart_count: if rng.gen_bool(0.1) { 1 } else { 0 },
    })
}

/// Groups and registrations drawn so far.
#[derive(Default)]
struct Lists {
    groups: Vec<ObservedGroup>,
    runners: Vec<ObservedRunner>,
    next_id: u64,
}

/// A random observed state; the draws happen in a fixed order, so a seed gives one case.
fn random_fx(rng: &mut StdRng) -> Fx {
    let mut fx = Fx::new();
    random_spec(rng, &mut fx);
    let mut lists = Lists { next_id: 1, ..Default::default() };
    for _ in 0..rng.gen_range(0..9) {
        random_group(rng, &mut fx, &mut lists);
    }
    // Registrations without groups (ours and others', busy or not).
    for _ in 0..rng.gen_range(0..4) {
        random_loose_runner(rng, &mut fx, &mut lists);
    }
    random_memory(rng, &mut fx, &lists.groups);
    random_edges(rng, &mut fx, lists);
    fx
}

fn random_spec(rng: &mut StdRng, fx: &mut Fx) {
    fx.spec.scaling.min_idle = rng.gen_range(0..4);
    fx.spec.scaling.max_runners = rng.gen_range(fx.spec.scaling.min_idle.max(1)..9);
    if rng.gen_bool(0.3) {
        fx.spec.azure.fallback_locations = vec!["northeurope".into()];
    }
    if rng.gen_bool(0.2) {
        fx.spec.runner.priority = Priority::Spot;
        fx.spec.runner.spot_fallback = rng.gen_bool(0.5);
    }
    if rng.gen_bool(0.05) {
        fx.spec.runner.memory_gb = 100.0;
    }
}

/// An install id tag: this install's (mostly), another install's, or none (a group created
/// before install ids).
fn random_install(rng: &mut StdRng) -> Option<String> {
    match rng.gen_range(0..10) {
        0 | 1 => Some(OTHER_INSTALL.to_string()),
        2 => None,
        _ => Some(INSTALL.to_string()),
    }
}

/// Owner labels of a registration: this install's for the pool (mostly), another install's or
/// another pool's (same name shape), or none (a registration made before owner labels).
fn random_owner_labels(rng: &mut StdRng, mut labels: Vec<String>) -> Vec<String> {
    let other = install::InstallId::parse(OTHER_INSTALL).unwrap();
    match rng.gen_range(0..10) {
        0 => labels.push(install::owner_label(&other, UID)),
        1 => labels.push(install::owner_label(&install(), "uid-other-pool")),
        2 => {}
        _ => labels.push(install::owner_label(&install(), UID)),
    }
    labels
}

/// A group of this pool (or of a dead pool, or untagged; of this install, another or none),
/// maybe with its registration and carried state.
fn random_group(rng: &mut StdRng, fx: &mut Fx, lists: &mut Lists) {
    let name = random_name(rng, "pool");
    let uid = match rng.gen_range(0..10) {
        0 => Some("uid-dead".to_string()),
        1 => None,
        _ => Some(UID.to_string()),
    };
    let install_id = random_install(rng);
    // The registration of a group carries the owner label of the install and pool that made
    // both (none for one made before owner labels): GitHub names are unique in a scope, so a
    // same-named registration of someone else cannot exist beside the group.
    let owner = install_id.as_deref().map(|i| {
        install::owner_label(&install::InstallId::parse(i).unwrap(), uid.as_deref().unwrap_or("none"))
    });
    lists.groups.push(ObservedGroup {
        name: name.clone(),
        pool_uid: uid,
        install_id,
        pool_namespace: Some("ns".into()),
        pool_name: Some("pool".into()),
        location: "westeurope".into(),
        provisioning: match rng.gen_range(0..8) {
            0 => GroupProvisioning::Failed,
            1 => GroupProvisioning::Deleting,
            2 => GroupProvisioning::Creating,
            _ => GroupProvisioning::Succeeded,
        },
        container: random_container(rng),
        failure: None,
        created: Some(t0() - mins(rng.gen_range(0..60))),
        priority: Priority::Regular,
        cpu: 1.0,
        memory_gb: 2.0,
    });
    if rng.gen_bool(0.7) {
        let busy = rng.gen_bool(0.4);
        lists.runners.push(ObservedRunner {
            id: lists.next_id,
            name: name.clone(),
            online: busy || rng.gen_bool(0.6),
            busy,
            labels: ["self-hosted".to_string(), "aci".to_string()].into_iter().chain(owner).collect(),
        });
        lists.next_id += 1;
    }
    if rng.gen_bool(0.3) {
        fx.state.idle_since.insert(name.clone(), t0() - mins(rng.gen_range(0..20)));
    }
    if rng.gen_bool(0.3) {
        fx.state.seen_online.insert(name.clone());
    }
    if rng.gen_bool(0.2) {
        let reason = if rng.gen_bool(0.5) { RemovalReason::ScaleDown } else { RemovalReason::Recycled };
        fx.state.removing.insert(name.clone(), Removal { since: t0() - mins(rng.gen_range(0..6)), reason });
    }
}

/// A registration without a group.
fn random_loose_runner(rng: &mut StdRng, fx: &mut Fx, lists: &mut Lists) {
    let next_id = lists.next_id;
    let prefix = if rng.gen_bool(0.7) { "pool" } else { "other" };
    let name = random_name(rng, prefix);
    let busy = rng.gen_bool(0.3);
    lists.runners.push(ObservedRunner {
        id: next_id,
        name: name.clone(),
        online: busy || rng.gen_bool(0.5),
        busy,
        labels: random_owner_labels(rng, vec!["aci".into()]),
    });
    if rng.gen_bool(0.5) {
        fx.state.gc_marks.insert(GcKey::Runner(next_id), t0() - mins(rng.gen_range(0..5)));
    }
    if rng.gen_bool(0.2) {
        fx.state.pending_unregister.insert(next_id, name);
    }
    lists.next_id += 1;
}

/// Carried GC marks, creates in flight and queued jobs.
fn random_memory(rng: &mut StdRng, fx: &mut Fx, groups: &[ObservedGroup]) {
    for g in groups {
        if rng.gen_bool(0.3) {
            fx.state.gc_marks.insert(GcKey::Group(g.name.clone()), t0() - mins(rng.gen_range(0..5)));
        }
    }
    for _ in 0..rng.gen_range(0..3) {
        fx.state.in_flight.insert(
            random_name(rng, "pool"),
            InFlight {
                since: t0() - mins(rng.gen_range(0..15)),
                location: "westeurope".into(),
                priority: Priority::Regular,
            },
        );
    }
    for j in 0..rng.gen_range(0..12) {
        let labels = if rng.gen_bool(0.7) { vec!["aci".to_string()] } else { vec!["gpu".to_string()] };
        fx.jobs.push(QueuedJob { id: j, labels, queued_at: t0() - mins(rng.gen_range(0..90)) });
    }
}

/// The lists (or their errors), credentials, deletion and failed actions of the last pass.
fn random_edges(rng: &mut StdRng, fx: &mut Fx, lists: Lists) {
    let Lists { groups, runners, .. } = lists;
    fx.groups = if rng.gen_bool(0.15) {
        Err(EdgeError::new(EdgeErrorKind::Transient, "ARM 500"))
    } else {
        Ok(groups)
    };
    fx.runners = if rng.gen_bool(0.15) {
        Err(EdgeError::new(EdgeErrorKind::Transient, "GitHub 502"))
    } else {
        Ok(runners)
    };
    if rng.gen_bool(0.1) {
        fx.creds = CredentialStatus::Invalid {
            problem: CredentialProblem::InvalidAppKey,
            message: "bad key".into(),
        };
    }
    if rng.gen_bool(0.2) {
        // Deleting, still within drainTimeout (60m).
        fx.pool.deletion_timestamp = Some(t0() - mins(rng.gen_range(0..30)));
    }
    if rng.gen_bool(0.2) {
        let kind = match rng.gen_range(0..4) {
            0 => EdgeErrorKind::CapacityUnavailable,
            1 => EdgeErrorKind::QuotaExceeded,
            2 => EdgeErrorKind::InvalidImage,
            _ => EdgeErrorKind::Transient,
        };
        fx.failures.push(ActionFailure {
            action: Action::CreateRunner {
                name: random_name(rng, "pool"),
                location: "westeurope".into(),
                priority: Priority::Regular,
                registration: RunnerRegistration::Jit { labels: vec![], runner_group: None },
            },
            error: EdgeError::new(kind, "x"),
            registered_runner: if rng.gen_bool(0.3) { Some(9999) } else { None },
        });
    }
}

fn check(fx: &Fx, p: &Plan, case: usize) {
    let ctx = || format!("case {case}: {:?}", p.actions);
    check_input_gates(fx, p, &ctx);
    check_busy_untouched(fx, p, &ctx);
    check_other_installs_untouched(fx, p, &ctx);
    check_names(fx, p, &ctx);
    check_order(p, &ctx);
    check_conditions(fx, p, &ctx);
}

/// Failed lists, bad input and deletion limit what may be done.
fn check_input_gates(fx: &Fx, p: &Plan, ctx: &dyn Fn() -> String) {
    let groups = fx.groups.as_ref().ok();
    let runners = fx.runners.as_ref().ok();
    // No deletes when a list failed (the orphan policy only releases).
    if groups.is_none() || runners.is_none() {
        assert!(
            !p.actions
                .iter()
                .any(|a| matches!(a, Action::DeleteGroup { .. } | Action::UnregisterRunner { .. })),
            "{}",
            ctx()
        );
        assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateRunner { .. })), "{}", ctx());
    }
    // Bad input: nothing created, nothing deleted (while alive).
    let bad_input =
        fx.spec.runner.memory_gb > crate::crd::ACI_MAX_MEMORY_GB || fx.creds != CredentialStatus::Ok;
    if bad_input && fx.pool.deletion_timestamp.is_none() {
        assert!(p.actions.is_empty(), "{}", ctx());
    }
    if fx.pool.deletion_timestamp.is_some() {
        assert!(!p.actions.iter().any(|a| matches!(a, Action::CreateRunner { .. })), "{}", ctx());
    }
}

/// Never touch a busy runner (deletion cases are within drainTimeout).
fn check_busy_untouched(fx: &Fx, p: &Plan, ctx: &dyn Fn() -> String) {
    if let Ok(runners) = &fx.runners {
        let busy_ids: BTreeSet<u64> = runners.iter().filter(|r| r.busy).map(|r| r.id).collect();
        let busy_names: BTreeSet<&str> = runners.iter().filter(|r| r.busy).map(|r| r.name.as_str()).collect();
        for a in &p.actions {
            match a {
                Action::UnregisterRunner { id, .. } => assert!(!busy_ids.contains(id), "{}", ctx()),
                Action::DeleteGroup { name, .. } => assert!(!busy_names.contains(name.as_str()), "{}", ctx()),
                _ => {}
            }
        }
    }
}

/// Groups of another install (or without install id and a pool uid not live here) are never
/// deleted or released; registrations with another owner label, or without one and without a
/// group or create of ours under their name, are never unregistered (except the JIT
/// registrations the planner remembers minting).
fn check_other_installs_untouched(fx: &Fx, p: &Plan, ctx: &dyn Fn() -> String) {
    let (Ok(groups), Ok(runners)) = (&fx.groups, &fx.runners) else { return };
    let not_ours: BTreeSet<&str> = groups
        .iter()
        .filter(|g| !install::claim_group(&fx.install, &fx.live, g).is_ours())
        .map(|g| g.name.as_str())
        .collect();
    // The registration of one of our groups (this pool's or an older one's) is someone else's
    // only with another owner label than that group's pool; one without such a group is ours
    // only with this pool's label or as one of our creates.
    let our_groups: BTreeMap<&str, &ObservedGroup> = groups
        .iter()
        .filter(|g| {
            install::claim_group(&fx.install, &fx.live, g).is_ours()
                || install::is_pool_group(&fx.install, UID, g)
        })
        .map(|g| (g.name.as_str(), g))
        .collect();
    let label = install::owner_label(&fx.install, UID);
    let foreign_ids: BTreeSet<u64> = runners
        .iter()
        .filter(|r| match our_groups.get(r.name.as_str()) {
            Some(g) => {
                let label = install::owner_label(&fx.install, g.pool_uid.as_deref().unwrap_or_default());
                install::runner_claim(&label, &r.labels) == install::RunnerClaim::Other
            }
            None => {
                install::runner_claim(&label, &r.labels) != install::RunnerClaim::Labelled
                    && !fx.state.in_flight.contains_key(&r.name)
            }
        })
        .filter(|r| !fx.state.pending_unregister.contains_key(&r.id))
        .map(|r| r.id)
        .collect();
    for a in &p.actions {
        match a {
            Action::DeleteGroup { name, .. } | Action::ReleaseGroup { name } => {
                assert!(!not_ours.contains(name.as_str()), "{name} is not ours: {}", ctx())
            }
            Action::UnregisterRunner { id, name, .. } => {
                assert!(!foreign_ids.contains(id), "{name} ({id}) is not ours: {}", ctx())
            }
            Action::CreateRunner { .. } => {}
        }
    }
}

/// Desired within bounds; names unique, valid, never seen.
fn check_names(fx: &Fx, p: &Plan, ctx: &dyn Fn() -> String) {
    let groups = fx.groups.as_ref().ok();
    let runners = fx.runners.as_ref().ok();
    assert!(p.status.desired >= 0 && p.status.desired <= fx.spec.scaling.max_runners.max(0), "{}", ctx());
    let mut seen: BTreeSet<String> = fx.state.in_flight.keys().cloned().collect();
    seen.extend(fx.state.used_names.keys().cloned());
    if let Some(g) = groups {
        seen.extend(g.iter().map(|g| g.name.clone()));
    }
    if let Some(r) = runners {
        seen.extend(r.iter().map(|r| r.name.clone()));
    }
    let mut created = BTreeSet::new();
    for a in &p.actions {
        if let Action::CreateRunner { name, .. } = a {
            assert!(names::is_valid_group_name(name), "{name}");
            assert!(names::is_pool_runner_name("pool", name), "{name}");
            assert!(!seen.contains(name), "reused {name}: {}", ctx());
            assert!(created.insert(name.clone()), "duplicate {name}");
        }
    }
    if !created.is_empty() {
        assert!(
            p.status.busy + p.status.idle + p.status.provisioning <= fx.spec.scaling.max_runners,
            "{}",
            ctx()
        );
    }
}

/// A guarded delete follows its unregister; no action twice.
fn check_order(p: &Plan, ctx: &dyn Fn() -> String) {
    for (i, a) in p.actions.iter().enumerate() {
        if let Action::DeleteGroup { only_if_unregistered: Some(id), .. } = a {
            assert!(
                p.actions[..i].iter().any(|b| matches!(b, Action::UnregisterRunner { id: x, .. } if x == id)),
                "{}",
                ctx()
            );
        }
        assert!(!p.actions[..i].contains(a), "duplicate action {a:?}: {}", ctx());
    }
}

/// Exactly the three conditions, Ready True only when idle + busy == desired, status and
/// reason agree, and every reason is a documented one.
fn check_conditions(fx: &Fx, p: &Plan, ctx: &dyn Fn() -> String) {
    assert_eq!(p.status.conditions.len(), 3);
    if conditions::is_true(&p.status.conditions, conditions::READY) {
        assert_eq!(p.status.idle + p.status.busy, p.status.desired, "{}", ctx());
        assert!(!conditions::is_true(&p.status.conditions, conditions::STALLED));
    }
    assert!(p.requeue_after >= fx.config.min_requeue && p.requeue_after <= fx.config.resync);
    // Status and reason agree.
    for c in &p.status.conditions {
        let positive_only = ["RunnersReady"];
        let negative_only = ["Converged", "NotStalled", "Stalled"];
        if c.status == "True" {
            assert!(!negative_only.contains(&c.reason.as_str()), "{} True with {}", c.type_, c.reason);
        } else {
            assert!(!positive_only.contains(&c.reason.as_str()), "{} False with {}", c.type_, c.reason);
            if c.type_ == conditions::READY {
                assert!(!negative_only.contains(&c.reason.as_str()), "Ready False with {}", c.reason);
            }
        }
    }
    // Reasons are the documented ones.
    for c in &p.status.conditions {
        assert!(
            conditions::CONDITION_REASONS.contains(&c.reason.as_str()),
            "undocumented reason {}",
            c.reason
        );
    }
    for e in &p.events {
        assert!(
            conditions::EVENT_REASONS.contains(&e.reason.as_str())
                || conditions::CONDITION_REASONS.contains(&e.reason.as_str()),
            "undocumented event reason {}",
            e.reason
        );
    }
}

#[test]
fn invariants_hold_over_random_observed_states() {
    let mut rng = StdRng::seed_from_u64(0x05ee_dac1);
    for case in 0..400 {
        let mut fx = random_fx(&mut rng);
        let mut suffix_rng = StdRng::seed_from_u64(case as u64);
        // A few passes over the same observation with time moving on.
        for _ in 0..3 {
            let p = fx.run_with(&mut || names::random_suffix(&mut suffix_rng));
            check(&fx, &p, case);
            fx.carry(&p, mins(rng.gen_range(0..4)));
        }
    }
}

#[test]
fn colliding_suffix_source_never_reuses_names() {
    let mut rng = StdRng::seed_from_u64(42);
    for case in 0..150 {
        let fx = random_fx(&mut rng);
        // A source that keeps proposing the same few names.
        let mut counter = counter_suffixes();
        let mut n = 0;
        let p = fx.run_with(&mut || {
            n += 1;
            if n % 3 == 0 { "aaaaa".to_string() } else { counter() }
        });
        check(&fx, &p, case);
    }
}
