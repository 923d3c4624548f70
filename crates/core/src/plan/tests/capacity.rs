//! Capacity: fallback locations, Spot fallback, quota waits.
use super::*;

/// A Regular create of `name` in `location` refused for capacity.
fn no_capacity(name: &str, location: &str) -> ActionFailure {
    create_failure(name, location, Priority::Regular, EdgeErrorKind::CapacityUnavailable)
}

#[test]
fn capacity_spills_to_fallback_locations_in_order() {
    let mut fx = Fx::new();
    fx.spec.azure.fallback_locations = vec!["northeurope".into(), "swedencentral".into()];
    fx.failures = vec![no_capacity("pool-aaaaa", "westeurope")];
    let p = fx.run();
    let locs: Vec<&str> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateRunner { location, .. } => Some(location.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(locs, vec!["northeurope", "northeurope"]);
    assert!(has_event(&p, "CapacityUnavailable"));
    assert!(p.state.location_cooldown.contains_key("westeurope"));
    fx.carry(&p, mins(1));
    fx.failures = ["pool-aaaaa", "pool-aaaab"].iter().map(|n| no_capacity(n, "northeurope")).collect();
    let p = fx.run();
    assert!(
        creates(&p)
            .iter()
            .all(|a| matches!(a, Action::CreateRunner { location, .. } if location == "swedencentral"))
    );
    fx.carry(&p, mins(1));
    fx.failures = vec![no_capacity("pool-aaaac", "swedencentral")];
    let p = fx.run();
    assert!(creates(&p).is_empty());
    cond_is(&p, "Reconciling", "True", "CapacityUnavailable");
    cond_is(&p, "Stalled", "False", "NotStalled");
    // After the cool-down of the primary location, it is tried again.
    fx.carry(&p, mins(8));
    let p = fx.run();
    assert!(
        creates(&p)
            .iter()
            .all(|a| matches!(a, Action::CreateRunner { location, .. } if location == "westeurope"))
    );
    assert_eq!(creates(&p).len(), 1);
}

#[test]
fn spot_falls_back_to_regular_only_with_spot_fallback() {
    for (fallback, kind) in [
        (true, EdgeErrorKind::CapacityUnavailable),
        (true, EdgeErrorKind::QuotaExceeded),
        (false, EdgeErrorKind::CapacityUnavailable),
    ] {
        let mut fx = Fx::new();
        fx.spec.runner.priority = Priority::Spot;
        fx.spec.runner.spot_fallback = fallback;
        fx.spec.azure.fallback_locations = vec!["northeurope".into()];
        let p = fx.run();
        assert!(
            creates(&p).iter().all(|a| matches!(a, Action::CreateRunner { priority: Priority::Spot, .. }))
        );
        fx.carry(&p, chrono::Duration::seconds(10));
        fx.failures = vec![create_failure("pool-aaaaa", "westeurope", Priority::Spot, kind.clone())];
        let p = fx.run();
        let got: Vec<(String, Priority)> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateRunner { location, priority, .. } => Some((location.clone(), *priority)),
                _ => None,
            })
            .collect();
        let want = if fallback {
            (String::from("westeurope"), Priority::Regular)
        } else {
            (String::from("northeurope"), Priority::Spot)
        };
        assert_eq!(got, vec![want], "fallback {fallback} {kind:?}");
        cond_is(&p, "Stalled", "False", "NotStalled");
        if fallback {
            assert!(has_event(&p, "SpotFallback"));
        }
    }
    // Spot again once the cool-down is over.
    for (until, want) in [(mins(1), Priority::Regular), (-mins(1), Priority::Spot)] {
        let mut fx = Fx::new();
        fx.spec.runner.priority = Priority::Spot;
        fx.spec.runner.spot_fallback = true;
        fx.state.spot_unavailable_until = Some(t0() + until);
        let p = fx.run();
        assert_eq!(creates(&p).len(), 2);
        assert!(
            creates(&p)
                .iter()
                .all(|a| matches!(a, Action::CreateRunner { priority, .. } if *priority == want))
        );
    }
}

#[test]
fn quota_exceeded_waits_and_says_so_then_recovers() {
    let mut fx = Fx::with_min_idle(1);
    let p = fx.run();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures =
        vec![create_failure("pool-aaaaa", "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    assert!(creates(&p).is_empty());
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    cond_is(&p, "Ready", "False", "QuotaExceeded");
    assert_eq!(p.events.iter().filter(|e| e.reason == "QuotaExceeded").count(), 1);
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(1));
    // Still waiting: no create loop, no repeated event.
    fx.carry(&p, chrono::Duration::seconds(30));
    let p = fx.run();
    assert!(creates(&p).is_empty());
    assert!(!has_event(&p, "QuotaExceeded"));
    // Wait over: one retry; a second quota error doubles the wait.
    fx.carry(&p, chrono::Duration::seconds(31));
    let p = fx.run();
    let retry = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.failures = vec![create_failure(&retry, "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    let p = fx.run();
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(2));
    // Retry succeeds: the group shows up → quota cleared, Stalled False.
    fx.carry(&p, mins(2));
    let p = fx.run();
    let name = creates(&p)[0].name().to_string();
    fx.carry(&p, chrono::Duration::seconds(10));
    fx.groups = Ok(vec![group(&name, ContainerState::Waiting { reason: None }, 0)]);
    let p = fx.run();
    assert!(p.state.quota.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
}

#[test]
fn creates_accepted_in_the_pass_of_a_quota_refusal_do_not_end_the_quota_wait() {
    // Pass 1 creates three; ARM accepts two, then refuses the third for quota. In pass 2 the
    // two accepted groups are listed: that says nothing about quota now, so no retry before
    // the quota wait is over.
    let mut fx = Fx::with_min_idle(3);
    let p = fx.run();
    let names: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    assert_eq!(names.len(), 3);
    fx.carry(&p, chrono::Duration::seconds(1));
    fx.failures =
        vec![create_failure(&names[2], "westeurope", Priority::Regular, EdgeErrorKind::QuotaExceeded)];
    fx.groups =
        Ok(names[..2].iter().map(|n| group(n, ContainerState::Waiting { reason: None }, 0)).collect());
    let p = fx.run();
    assert!(creates(&p).is_empty(), "retried at once: {:?}", p.actions);
    cond_is(&p, "Stalled", "True", "QuotaExceeded");
    assert_eq!(p.state.quota.as_ref().unwrap().until, fx.now + mins(1));
    // After the wait: a single retry; once it is accepted (listed), the quota wait ends.
    fx.carry(&p, mins(1));
    let p = fx.run();
    let retry: Vec<String> = creates(&p).iter().map(|a| a.name().to_string()).collect();
    assert_eq!(retry.len(), 1, "{:?}", p.actions);
    fx.carry(&p, chrono::Duration::seconds(5));
    fx.groups.as_mut().unwrap().push(group(&retry[0], ContainerState::Waiting { reason: None }, 0));
    let p = fx.run();
    assert!(p.state.quota.is_none());
    cond_is(&p, "Stalled", "False", "NotStalled");
}
