//! The install identity and the ownership rules built on it.
//!
//! An install is one controller deployment (one Helm release in one cluster). Its id is tagged
//! on every container group it creates (`aci-runners-install-id`), and a label derived from the
//! id and the pool uid ([`owner_label`]) is put on every runner registration it makes. Every
//! removal, release and GC decision goes through [`claim_group`] and [`runner_claim`]:
//!
//! - a group tagged with another install's id is never touched, whatever its other tags say;
//! - a group without an install id (created before install ids existed) is adopted only when
//!   its pool uid is live in this cluster;
//! - a registration is this pool's only when it carries this install's owner label for the
//!   pool, or when it carries no owner label and has the name of one of this pool's own groups
//!   (a registration made before owner labels existed). A name pattern alone never makes a
//!   registration ours.
//!
//! Everything here is a function of the Azure tags, the GitHub labels and the install id, so it
//! holds the same after a restart.
use std::collections::BTreeSet;
use std::fmt;

use sha2::{Digest, Sha256};

use super::types::ObservedGroup;

/// Longest install id: it is a tag value and a label-safe token; 63 keeps it within every
/// name limit it may meet (Kubernetes label values, DNS labels).
pub const INSTALL_ID_MAX_LEN: usize = 63;
/// Prefix of the owner label of a runner registration.
pub const OWNER_LABEL_PREFIX: &str = "aci-owner-";
/// Hex characters of the owner hash (64 bits: a collision between two pools is far below any
/// other risk).
const OWNER_HASH_HEX: usize = 16;
/// Hex characters of the cluster hash in a derived install id.
const CLUSTER_HASH_HEX: usize = 10;

/// A validated install id: 1 to [`INSTALL_ID_MAX_LEN`] characters of `[a-z0-9.-]`, starting and
/// ending with a letter or digit (safe as an Azure tag value and in a GitHub label).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstallId(String);

/// Why a string is not an install id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid install id {value:?}: {problem}")]
pub struct InvalidInstallId {
    pub value: String,
    pub problem: &'static str,
}

impl InstallId {
    pub fn parse(value: &str) -> Result<Self, InvalidInstallId> {
        let bad = |problem| Err(InvalidInstallId { value: value.chars().take(80).collect(), problem });
        if value.is_empty() {
            return bad("it is empty");
        }
        if value.len() > INSTALL_ID_MAX_LEN {
            return bad("it is longer than 63 characters");
        }
        if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.') {
            return bad("only lowercase letters, digits, '-' and '.' are allowed");
        }
        let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        if !alnum(value.bytes().next()) || !alnum(value.bytes().last()) {
            return bad("it must start and end with a letter or digit");
        }
        Ok(Self(value.to_string()))
    }

    /// The id derived from an install name (e.g. `<release namespace>.<release name>`) and the
    /// cluster's identity (the uid of its `kube-system` namespace, which never changes for the
    /// life of a cluster): `<name, made id-safe and cut to fit>-<10 hex of sha256(cluster uid,
    /// name)>`. The same release in the same cluster always gets the same id (restarts,
    /// upgrades, a reinstall); the same release name in another cluster gets another.
    pub fn derive(install_name: &str, cluster_uid: &str) -> Self {
        let hash = hex_prefix(&[cluster_uid, install_name], CLUSTER_HASH_HEX);
        let mut base = String::new();
        for c in install_name.chars().map(|c| c.to_ascii_lowercase()) {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' { c } else { '-' };
            if !base.is_empty() || c.is_ascii_alphanumeric() {
                base.push(c);
            }
        }
        base.truncate(INSTALL_ID_MAX_LEN - CLUSTER_HASH_HEX - 1);
        while base.ends_with(['-', '.']) {
            base.pop();
        }
        Self(if base.is_empty() { hash } else { format!("{base}-{hash}") })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first `n` hex characters of sha256 over `parts` (each followed by a NUL, so that no two
/// different part lists hash the same bytes). SHA-256 is used for its stable, specified
/// output: a hash that could change between builds would change owner labels and install ids.
fn hex_prefix(parts: &[&str], n: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex.chars().take(n).collect()
}

/// The label every registration of `pool_uid`'s runners made by `install` carries:
/// `aci-owner-<16 hex of sha256(install id, pool uid)>`. No other install and no other pool
/// produces it.
pub fn owner_label(install: &InstallId, pool_uid: &str) -> String {
    format!("{OWNER_LABEL_PREFIX}{}", hex_prefix(&[install.as_str(), pool_uid], OWNER_HASH_HEX))
}

/// How a listed container group stands with this install.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupClaim {
    /// Tagged with this install's id.
    Ours,
    /// No install id, and its pool uid is live in this cluster: created by this install before
    /// install ids existed, treated as ours.
    Adopted,
    /// Another install's, or a group without install id whose pool uid is not live here (it
    /// may be another cluster's): never touched.
    NotOurs,
}

impl GroupClaim {
    pub fn is_ours(self) -> bool {
        !matches!(self, GroupClaim::NotOurs)
    }
}

/// The claim of this install on `g`, with `live_pool_uids` the uids of every RunnerPool of this
/// cluster.
pub fn claim_group(install: &InstallId, live_pool_uids: &BTreeSet<String>, g: &ObservedGroup) -> GroupClaim {
    match g.install_id.as_deref() {
        Some(id) if id == install.as_str() => GroupClaim::Ours,
        Some(_) => GroupClaim::NotOurs,
        None if g.pool_uid.as_deref().is_some_and(|u| live_pool_uids.contains(u)) => GroupClaim::Adopted,
        None => GroupClaim::NotOurs,
    }
}

/// Is `g` one of the groups of the pool `pool_uid` of this install? Its uid tag names the pool
/// and its install id is ours or absent (the pool exists: it is the one being planned, so a
/// group without install id is adopted).
pub fn is_pool_group(install: &InstallId, pool_uid: &str, g: &ObservedGroup) -> bool {
    g.pool_uid.as_deref() == Some(pool_uid) && g.install_id.as_deref().is_none_or(|id| id == install.as_str())
}

/// The owner label among a registration's labels, if it has one.
pub fn owner_label_of(labels: &[String]) -> Option<&str> {
    labels.iter().map(String::as_str).find(|l| {
        l.len() > OWNER_LABEL_PREFIX.len()
            && l.get(..OWNER_LABEL_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(OWNER_LABEL_PREFIX))
    })
}

/// What a registration's labels say about its owner, for the pool whose label is `own_label`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerClaim {
    /// It carries `own_label`.
    Labelled,
    /// It carries no owner label (made before owner labels existed, or by something else).
    Unlabelled,
    /// It carries another pool's or install's owner label.
    Other,
}

pub fn runner_claim(own_label: &str, labels: &[String]) -> RunnerClaim {
    match owner_label_of(labels) {
        Some(l) if l.eq_ignore_ascii_case(own_label) => RunnerClaim::Labelled,
        Some(_) => RunnerClaim::Other,
        None => RunnerClaim::Unlabelled,
    }
}

/// Is a registration with these labels, named like this install's group `g`, that group's
/// runner? Not when it carries the owner label of another pool or install (then neither it nor,
/// unguarded, the group is removed).
pub fn registration_fits_group(install: &InstallId, g: &ObservedGroup, labels: &[String]) -> bool {
    let label = owner_label(install, g.pool_uid.as_deref().unwrap_or_default());
    runner_claim(&label, labels) != RunnerClaim::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::running;

    fn id(s: &str) -> InstallId {
        InstallId::parse(s).unwrap()
    }

    #[test]
    fn install_id_validation_table() {
        for (value, ok) in [
            ("prod", true),
            ("aci-system.aci-runner-controller-3f2a9c01de", true),
            ("a", true),
            ("", false),
            ("Prod", false),
            ("-prod", false),
            ("prod.", false),
            ("pr od", false),
            ("prod/eu", false),
            ("prod=x", false),
        ] {
            assert_eq!(InstallId::parse(value).is_ok(), ok, "{value:?}");
        }
        assert!(InstallId::parse(&"a".repeat(63)).is_ok());
        let e = InstallId::parse(&"a".repeat(64)).unwrap_err();
        assert!(e.to_string().contains("63"), "{e}");
    }

    #[test]
    fn derived_ids_are_valid_stable_and_per_cluster() {
        let a = InstallId::derive("aci-system.aci-runner-controller", "uid-cluster-a");
        assert_eq!(a, InstallId::derive("aci-system.aci-runner-controller", "uid-cluster-a"));
        assert_ne!(a, InstallId::derive("aci-system.aci-runner-controller", "uid-cluster-b"));
        assert_ne!(a, InstallId::derive("other.aci-runner-controller", "uid-cluster-a"));
        assert!(a.as_str().starts_with("aci-system.aci-runner-controller-"), "{a}");
        for name in ["", "---", "Ns/Release_Name", &"x".repeat(200), ".a.", "ü"] {
            let d = InstallId::derive(name, "uid");
            assert_eq!(InstallId::parse(d.as_str()), Ok(d.clone()), "{name:?} → {d}");
        }
    }

    #[test]
    fn owner_labels_differ_per_install_and_pool() {
        let (a, b) = (id("a"), id("b"));
        let l = owner_label(&a, "uid-1");
        assert_eq!(l, owner_label(&a, "uid-1"));
        assert_ne!(l, owner_label(&b, "uid-1"));
        assert_ne!(l, owner_label(&a, "uid-2"));
        assert_eq!(l.len(), OWNER_LABEL_PREFIX.len() + 16);
        let labels = |extra: &str| vec!["self-hosted".to_string(), "aci".to_string(), extra.to_string()];
        assert_eq!(runner_claim(&l, &labels(&l)), RunnerClaim::Labelled);
        assert_eq!(runner_claim(&l, &labels(&l.to_ascii_uppercase())), RunnerClaim::Labelled);
        assert_eq!(runner_claim(&l, &labels(&owner_label(&b, "uid-1"))), RunnerClaim::Other);
        assert_eq!(runner_claim(&l, &labels("linux")), RunnerClaim::Unlabelled);
    }

    #[test]
    fn group_claims() {
        let me = id("me");
        let live: BTreeSet<String> = ["uid-live".to_string()].into();
        let g = |install: Option<&str>, uid: Option<&str>| {
            let mut g = running("pool-aaaaa");
            g.install_id = install.map(str::to_string);
            g.pool_uid = uid.map(str::to_string);
            g
        };
        let cases = [
            (Some("me"), Some("uid-dead"), GroupClaim::Ours),
            (Some("me"), None, GroupClaim::Ours),
            (Some("other"), Some("uid-live"), GroupClaim::NotOurs),
            (None, Some("uid-live"), GroupClaim::Adopted),
            (None, Some("uid-dead"), GroupClaim::NotOurs),
            (None, None, GroupClaim::NotOurs),
        ];
        for (install, uid, want) in cases {
            assert_eq!(claim_group(&me, &live, &g(install, uid)), want, "{install:?} {uid:?}");
        }
        assert!(is_pool_group(&me, "uid-live", &g(None, Some("uid-live"))));
        assert!(is_pool_group(&me, "uid-live", &g(Some("me"), Some("uid-live"))));
        assert!(!is_pool_group(&me, "uid-live", &g(Some("other"), Some("uid-live"))));
        assert!(!is_pool_group(&me, "uid-live", &g(Some("me"), Some("uid-x"))));
    }
}
