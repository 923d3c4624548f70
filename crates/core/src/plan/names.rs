//! Runner names: `<pool name>-<5 random [a-z0-9]>`, at most 63 characters, valid as an ACI
//! container group name (lowercase letters, digits and single hyphens, no hyphen at either end)
//! and as a GitHub runner name.

use super::types::{ObservedGroup, PoolMeta};

/// Length of the random suffix.
pub const SUFFIX_LEN: usize = 5;
/// ACI container group names are at most 63 characters.
pub const MAX_NAME_LEN: usize = 63;
const SUFFIX_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Attempts at drawing an unused suffix before giving up for this pass.
pub const MAX_NAME_ATTEMPTS: usize = 32;

/// The runner-name prefix of a pool: its name made ACI-valid and short enough for the suffix.
pub fn runner_name_prefix(pool_name: &str) -> String {
    let mut out = String::with_capacity(pool_name.len());
    for c in pool_name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(MAX_NAME_LEN - SUFFIX_LEN - 1);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "runner".to_string() } else { out }
}

/// Is `name` a valid ACI container group name?
pub fn is_valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Does `name` look like a runner of the pool with this prefix (`<prefix>-<5 [a-z0-9]>`)?
pub fn is_pool_runner_name(prefix: &str, name: &str) -> bool {
    match name.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('-')) {
        Some(suffix) => {
            suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }
        None => false,
    }
}

/// Does a listed container group concern the plan of `pool` (runner-name prefix `prefix`)? The
/// planner looks at the pool's own groups (by uid tag), at groups of an older pool of the same
/// namespace and name, and at the names of any other group that has the pool's runner-name shape
/// (so that a runner of that name is not taken for its own, and no name is drawn twice). Every
/// other group of a shared resource group is irrelevant to its plan, so the ports hand the
/// planner only these: a pass costs the pool's share of a shared list, not the whole list, which
/// keeps many pools over one large resource group cheap. Runners concern a pool when
/// [`is_pool_runner_name`] says so.
pub fn group_concerns_pool(pool: &PoolMeta, prefix: &str, g: &ObservedGroup) -> bool {
    g.pool_uid.as_deref() == Some(pool.uid.as_str())
        || (g.pool_namespace.as_deref() == Some(pool.namespace.as_str())
            && g.pool_name.as_deref() == Some(pool.name.as_str()))
        || is_pool_runner_name(prefix, &g.name)
}

/// Normalize a drawn suffix: its first five `[a-z0-9]` characters (lowercased), if it has five.
pub fn normalize_suffix(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(SUFFIX_LEN)
        .collect();
    (s.len() == SUFFIX_LEN).then_some(s)
}

/// A random suffix; the controller passes `|| random_suffix(&mut rng)` to the planner.
pub fn random_suffix<R: rand::Rng + ?Sized>(rng: &mut R) -> String {
    (0..SUFFIX_LEN).map(|_| SUFFIX_ALPHABET[rng.gen_range(0..SUFFIX_ALPHABET.len())] as char).collect()
}

/// Draw a fresh name: `taken` says whether a name was ever seen; gives up (None) after
/// [`MAX_NAME_ATTEMPTS`] unusable draws.
pub fn fresh_name(
    prefix: &str,
    taken: &dyn Fn(&str) -> bool,
    suffixes: &mut dyn FnMut() -> String,
) -> Option<String> {
    for _ in 0..MAX_NAME_ATTEMPTS {
        let Some(suffix) = normalize_suffix(&suffixes()) else { continue };
        let name = format!("{prefix}-{suffix}");
        if is_valid_group_name(&name) && !taken(&name) {
            return Some(name);
        }
    }
    None
}

/// The actions-runner version an image reference pins (`…/actions-runner:2.329.0` → `2.329.0`):
/// its tag when that is a `major.minor.patch` version, else None (`latest`, a digest, a custom
/// tag: the version is not known, and no deprecation is looked up).
pub fn runner_version_of(image: &str) -> Option<&str> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.rsplit_once(':')?;
    let parts: Vec<&str> = tag.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit());
    (parts.len() == 3 && parts.iter().all(numeric)).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn runner_version_is_read_from_a_version_tag_only() {
        for (image, v) in [
            ("ghcr.io/actions/actions-runner:2.329.0", Some("2.329.0")),
            ("registry:5000/team/actions-runner:2.300.1", Some("2.300.1")),
            ("ghcr.io/actions/actions-runner:2.329.0@sha256:abc", Some("2.329.0")),
            ("ghcr.io/actions/actions-runner:latest", None),
            ("ghcr.io/actions/actions-runner", None),
            ("registry:5000/actions-runner", None),
            ("ghcr.io/actions/actions-runner@sha256:abc", None),
            ("example/runner:2.329", None),
            ("example/runner:v2.329.0", None),
            ("example/runner:2.329.0-ubuntu", None),
        ] {
            assert_eq!(runner_version_of(image), v, "{image}");
        }
    }

    #[test]
    fn prefix_table() {
        let long = "a".repeat(80);
        let cases: &[(&str, &str)] = &[
            ("pool", "pool"),
            ("My.Pool", "my-pool"),
            ("a..b", "a-b"),
            ("-x-", "x"),
            ("...", "runner"),
            (&long, &long[..57]),
            ("web.prod-eu", "web-prod-eu"),
        ];
        for (input, want) in cases {
            assert_eq!(runner_name_prefix(input), *want, "{input}");
        }
        // Truncation never leaves a trailing hyphen.
        let tricky = format!("{}-b", "a".repeat(56));
        let p = runner_name_prefix(&tricky);
        assert!(!p.ends_with('-'), "{p}");
        assert!(p.len() <= 57);
    }

    #[test]
    fn validity_table() {
        for (name, ok) in [
            ("pool-ab12c", true),
            ("Pool-ab12c", false),
            ("-pool", false),
            ("pool-", false),
            ("po--ol", false),
            ("po_ol", false),
            ("", false),
        ] {
            assert_eq!(is_valid_group_name(name), ok, "{name}");
        }
        assert!(is_valid_group_name(&"a".repeat(63)));
        assert!(!is_valid_group_name(&"a".repeat(64)));
    }

    #[test]
    fn pool_runner_name_matching() {
        assert!(is_pool_runner_name("web", "web-ab12c"));
        assert!(!is_pool_runner_name("web", "web-ab12"));
        assert!(!is_pool_runner_name("web", "web-ab-12345"));
        assert!(!is_pool_runner_name("web", "webx-ab12c"));
        assert!(!is_pool_runner_name("web", "web-AB12C"));
        assert!(!is_pool_runner_name("web-ab", "web-ab123"));
    }

    #[test]
    fn fresh_name_skips_taken_and_bad_draws() {
        let mut draws = vec!["ab12c", "!!", "AB12C", "zz999"].into_iter().map(String::from);
        let mut next = move || draws.next().unwrap_or_default();
        // "ab12c" is taken, "!!" is unusable, "AB12C" normalizes to the taken name again.
        let taken = |n: &str| n == "pool-ab12c";
        assert_eq!(fresh_name("pool", &taken, &mut next).as_deref(), Some("pool-zz999"));
        let mut empty = String::new;
        assert_eq!(fresh_name("pool", &|_: &str| false, &mut empty), None);
    }

    #[test]
    fn random_suffixes_are_valid() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let s = random_suffix(&mut rng);
            assert_eq!(normalize_suffix(&s).as_deref(), Some(s.as_str()));
            assert!(is_pool_runner_name("p", &format!("p-{s}")));
        }
    }
}
