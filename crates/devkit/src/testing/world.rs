//! One end-to-end test world: a fresh namespace on the shared control plane, the simulator, the
//! App Secret and the controller (in this process), with the queries and waits the controller
//! e2e tests share. `World::start(prefix, seed)` is the usual opening; `World::builder` takes
//! other simulator options, controller options, webhooks, more namespaces, or no controller yet.
use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

pub use crate::bench::observe::metric_sum;

use super::control_plane;
use super::harness::{
    self, ControllerHandle, ControllerOptions, apply_app_secret, apply_pool, condition, connect_webhooks,
    eventually, fast_sim_options, pool_manifest, start_controller,
};
use crate::sim::arm::{FaultConfig, GroupSummary, Quotas};
use crate::sim::github::{GithubFaults, JobRecord, RunnerRecord};
use crate::sim::{self, SimOptions, Simulator};
use aci_runner_core::crd::RunnerPool;

/// How long the waits of the world give the controller.
pub const T: Duration = Duration::from_secs(40);

type SimHook = Box<dyn FnOnce(&Simulator)>;
type OptsHook = Box<dyn FnOnce(&mut ControllerOptions)>;

/// How to start a [`World`]; from [`World::builder`].
pub struct WorldBuilder {
    prefix: String,
    sim: SimOptions,
    sim_hooks: Vec<SimHook>,
    opts_hooks: Vec<OptsHook>,
    extra_namespaces: Vec<String>,
    app_secret: bool,
    controller: bool,
}

impl WorldBuilder {
    /// The harness's fast simulator with this seed (the default is seed 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.sim = fast_sim_options(seed);
        self
    }

    /// Other simulator options.
    pub fn sim_options(mut self, opts: SimOptions) -> Self {
        self.sim = opts;
        self
    }

    /// Run `f` on the simulator before the controller starts (faults, quotas).
    pub fn with_sim(mut self, f: impl FnOnce(&Simulator) + 'static) -> Self {
        self.sim_hooks.push(Box::new(f));
        self
    }

    /// The simulated ARM draws these faults from the start.
    pub fn arm_faults(self, faults: FaultConfig) -> Self {
        self.with_sim(move |sim| sim.arm.set_faults(faults))
    }

    /// The simulated ARM enforces these quotas from the start.
    pub fn arm_quotas(self, quotas: Quotas) -> Self {
        self.with_sim(move |sim| sim.arm.set_quotas(quotas))
    }

    /// The simulated GitHub draws these faults from the start.
    pub fn github_faults(self, faults: GithubFaults) -> Self {
        self.with_sim(move |sim| sim.github.set_faults(faults))
    }

    /// Change the controller options (`ControllerOptions::for_namespace` and the namespaces).
    pub fn controller(mut self, f: impl FnOnce(&mut ControllerOptions) + 'static) -> Self {
        self.opts_hooks.push(Box::new(f));
        self
    }

    /// The controller takes `workflow_job` webhooks signed with `secret`; the simulated GitHub
    /// delivers them to each controller the world starts.
    pub fn webhooks(self, secret: &str) -> Self {
        let secret = secret.to_string();
        self.controller(move |o| o.webhook_secret = Some(secret))
    }

    /// One more fresh namespace (named `<prefix>-<random>`) that the controller watches too.
    pub fn extra_namespace(mut self, prefix: &str) -> Self {
        self.extra_namespaces.push(prefix.to_string());
        self
    }

    /// No App Secret `github-app` in the namespaces.
    pub fn without_app_secret(mut self) -> Self {
        self.app_secret = false;
        self
    }

    /// Start no controller yet ([`World::start_controller`] starts it).
    pub fn no_controller(mut self) -> Self {
        self.controller = false;
        self
    }

    /// [`WorldBuilder::start`], then apply pool `pool` with `minIdle: idle` and
    /// `maxRunners: max` (no wait).
    pub async fn start_pool(self, pool: &str, idle: i32, max: i32) -> World {
        let w = self.start().await;
        w.apply(pool, json!({"scaling": {"minIdle": idle, "maxRunners": max}})).await;
        w
    }

    pub async fn start(self) -> World {
        harness::init_test_logging();
        let (client, ns) = control_plane::setup(&self.prefix).await.unwrap();
        let mut extra_ns = Vec::new();
        for prefix in &self.extra_namespaces {
            extra_ns.push(control_plane::test_namespace(&client, prefix).await.unwrap());
        }
        let sim = sim::start(self.sim).await.unwrap();
        if self.app_secret {
            for n in std::iter::once(&ns).chain(&extra_ns) {
                apply_app_secret(&client, n, "github-app", &sim).await.unwrap();
            }
        }
        for hook in self.sim_hooks {
            hook(&sim);
        }
        let mut opts = ControllerOptions::for_namespace(&ns);
        opts.args.namespaces.extend(extra_ns.iter().cloned());
        for hook in self.opts_hooks {
            hook(&mut opts);
        }
        let mut w = World { client, ns, extra_ns, sim, opts, ctl: None };
        if self.controller {
            w.start_controller().await;
        }
        w
    }
}

/// A namespace, the simulator and (usually) a controller; see the module doc.
pub struct World {
    pub client: Client,
    pub ns: String,
    /// The namespaces from [`WorldBuilder::extra_namespace`], in order.
    pub extra_ns: Vec<String>,
    pub sim: Simulator,
    /// The options [`World::start_controller`] starts the controller with.
    pub opts: ControllerOptions,
    ctl: Option<ControllerHandle>,
}

impl World {
    pub fn builder(prefix: &str) -> WorldBuilder {
        WorldBuilder {
            prefix: prefix.to_string(),
            sim: fast_sim_options(0),
            sim_hooks: Vec::new(),
            opts_hooks: Vec::new(),
            extra_namespaces: Vec::new(),
            app_secret: true,
            controller: true,
        }
    }

    /// The usual world: fast simulator with `seed`, App Secret, one controller.
    pub async fn start(prefix: &str, seed: u64) -> World {
        Self::builder(prefix).seed(seed).start().await
    }

    // --- the controller -----------------------------------------------------------------------

    /// Start the world's controller with [`World::opts`] (webhooks connected when it takes them).
    pub async fn start_controller(&mut self) {
        assert!(self.ctl.is_none(), "the world's controller already runs");
        let ctl = self.spawn_controller(self.opts.clone()).await;
        self.ctl = Some(ctl);
    }

    /// Start one more controller with `opts`, owned by the caller (replicas, leader election).
    pub async fn spawn_controller(&self, opts: ControllerOptions) -> ControllerHandle {
        let secret = opts.webhook_secret.clone();
        let ctl = start_controller(&self.client, &self.sim, opts).await.unwrap();
        if let Some(secret) = secret {
            connect_webhooks(&self.sim, &ctl, &secret);
        }
        ctl
    }

    /// The running controller of the world.
    pub fn ctl(&self) -> &ControllerHandle {
        self.ctl.as_ref().expect("the world's controller is not running")
    }

    /// Take the controller out of the world (to stop or kill it by hand).
    pub fn take_controller(&mut self) -> ControllerHandle {
        self.ctl.take().expect("the world's controller is not running")
    }

    /// Stop the controller gracefully; it must stop without an error.
    pub async fn stop(&mut self) {
        self.take_controller().stop().await.unwrap();
    }

    /// Kill the controller (no graceful shutdown, no lease release).
    pub fn kill(&mut self) {
        self.take_controller().kill();
    }

    /// Stop the controller gracefully and start a new one with the same options.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_controller().await;
    }

    /// The install id the world's controller runs with: [`World::opts`]'s, else derived from
    /// the default install name and the control plane's `kube-system` namespace, as `run` does.
    pub async fn install_id(&self) -> aci_runner_core::plan::install::InstallId {
        use aci_runner_core::plan::install::InstallId;
        if let Some(id) = &self.opts.args.install_id {
            return InstallId::parse(id).unwrap();
        }
        let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .get("kube-system")
            .await
            .unwrap();
        InstallId::derive("aci-runner-controller", &ns.metadata.uid.unwrap())
    }

    /// The owner label the world's controller puts on the registrations of pool `name`.
    pub async fn owner_label(&self, name: &str) -> String {
        let uid = self.get_pool(name).await.and_then(|p| p.metadata.uid).expect("the pool exists");
        aci_runner_core::plan::install::owner_label(&self.install_id().await, &uid)
    }

    /// The controller's `/metrics`.
    pub async fn metrics(&self) -> String {
        self.ctl().metrics().await.unwrap()
    }

    /// The first sample of `name{...}` carrying all `labels` (0 when there is none).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let filters: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        samples(&self.metrics().await, name, &filters).next().unwrap_or(0.0)
    }

    /// `aci_runner_controller_reconcile_errors_total` (the counter must be there).
    pub async fn reconcile_errors(&self) -> f64 {
        let m = self.metrics().await;
        m.lines()
            .find_map(|l| l.strip_prefix("aci_runner_controller_reconcile_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no reconcile error counter in\n{m}"))
    }

    // --- pools --------------------------------------------------------------------------------

    /// Apply [`pool_manifest`] with `patch` merged over its spec, in the world's namespace.
    pub async fn apply(&self, name: &str, patch: Value) -> RunnerPool {
        self.apply_in(&self.ns, name, patch).await
    }

    /// Apply [`pool_manifest`] with `patch` in namespace `ns`.
    pub async fn apply_in(&self, ns: &str, name: &str, patch: Value) -> RunnerPool {
        self.apply_manifest_in(ns, &pool_manifest(name, &self.sim, patch)).await
    }

    /// Apply a whole RunnerPool manifest in the world's namespace.
    pub async fn apply_manifest(&self, manifest: &Value) -> RunnerPool {
        self.apply_manifest_in(&self.ns, manifest).await
    }

    async fn apply_manifest_in(&self, ns: &str, manifest: &Value) -> RunnerPool {
        apply_pool(&self.client, ns, manifest).await.unwrap()
    }

    fn pools(&self, ns: &str) -> Api<RunnerPool> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub async fn get_pool(&self, name: &str) -> Option<RunnerPool> {
        self.get_pool_in(&self.ns, name).await
    }

    async fn get_pool_in(&self, ns: &str, name: &str) -> Option<RunnerPool> {
        self.pools(ns).get_opt(name).await.ok().flatten()
    }

    /// Delete a pool (its finalizer then runs, if a controller does).
    pub async fn delete_pool(&self, name: &str) {
        self.pools(&self.ns).delete(name, &DeleteParams::default()).await.unwrap();
    }

    /// Remove a pool's finalizers, so that a delete takes it away without any cleanup.
    pub async fn drop_finalizers(&self, name: &str) {
        let no_finalizer = json!({"metadata": {"finalizers": null}});
        self.pools(&self.ns).patch(name, &PatchParams::default(), &Patch::Merge(no_finalizer)).await.unwrap();
    }

    /// Delete a pool without its finalizer running (as when no controller runs and someone
    /// removes the finalizer by hand); it must be gone within [`T`].
    pub async fn delete_without_cleanup(&self, name: &str) {
        self.drop_finalizers(name).await;
        self.delete_pool(name).await;
        assert!(self.wait_gone(name, T).await, "pool {name} was not deleted");
    }

    /// Wait until the pool is gone; whether it went within `timeout`.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) -> bool {
        eventually(timeout, || async { self.get_pool(name).await.is_none().then_some(()) }).await.is_some()
    }

    /// Wait until the pool is gone with every group and registration of it; whether they went
    /// within `timeout`.
    pub async fn wait_removed(&self, name: &str, timeout: Duration) -> bool {
        eventually(timeout, || async {
            let gone = self.get_pool(name).await.is_none();
            (gone && self.groups_of(name).is_empty() && self.runners_of(name).is_empty()).then_some(())
        })
        .await
        .is_some()
    }

    /// Apply a Secret with these `stringData` in the world's namespace.
    pub async fn apply_secret(&self, name: &str, data: Value) {
        self.apply_secret_in(&self.ns, name, data).await
    }

    /// Apply a Secret with these `stringData` in namespace `ns`.
    pub async fn apply_secret_in(&self, ns: &str, name: &str, data: Value) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data});
        harness::apply(&api, name, &secret).await.unwrap();
    }

    /// Delete a Secret of the world's namespace.
    pub async fn delete_secret(&self, name: &str) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }

    // --- waits --------------------------------------------------------------------------------

    /// Wait until `pred` holds for the pool; panic with its status and the simulator's view if not.
    pub async fn wait_pool(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&RunnerPool) -> bool,
    ) -> RunnerPool {
        self.wait_pool_in(&self.ns, name, what, timeout, pred).await
    }

    /// [`World::wait_pool`] for a pool in namespace `ns`.
    pub async fn wait_pool_in(
        &self,
        ns: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&RunnerPool) -> bool,
    ) -> RunnerPool {
        let got = eventually(timeout, || async {
            let p = self.get_pool_in(ns, name).await?;
            pred(&p).then_some(p)
        })
        .await;
        match got {
            Some(p) => p,
            None => panic!("pool {name}: never {what}\n{}", self.describe(name).await),
        }
    }

    /// Wait until the pool is Stalled with `reason` ([`World::wait_pool`] with [`T`]).
    pub async fn wait_stalled(&self, name: &str, reason: &str) -> RunnerPool {
        let what = format!("Stalled/{reason}");
        self.wait_pool(name, &what, T, |p| cond_is(p, "Stalled", "True", Some(reason))).await
    }

    /// Wait until the pool is Ready with `idle` idle runners and none busy, and the simulator
    /// shows as many groups and online idle runners.
    pub async fn wait_ready(&self, name: &str, idle: i32) -> RunnerPool {
        let ready = eventually(T, || async {
            let p = self.get_pool(name).await?;
            let st = p.status.as_ref()?;
            let ok = condition(&p, "Ready").map(|c| c.0) == Some("True".into())
                && st.idle == idle
                && st.busy == 0
                && self.groups_of(name).len() == idle as usize
                && self.runners_of(name).iter().filter(|r| r.online && !r.busy).count() == idle as usize;
            ok.then_some(p)
        })
        .await;
        match ready {
            Some(p) => p,
            None => panic!("pool {name} never Ready with {idle} idle\n{}", self.describe(name).await),
        }
    }

    /// Apply a pool with `minIdle: idle` and wait until it is Ready with that many idle runners.
    pub async fn apply_ready(&self, name: &str, idle: i32) -> RunnerPool {
        self.apply(name, json!({"scaling": {"minIdle": idle}})).await;
        self.wait_ready(name, idle).await
    }

    /// Wait until the pool is Ready with `n` idle runners (status of the current generation) and
    /// the simulator shows exactly `n` groups, each with its one online registration, and
    /// nothing else of the pool. Returns the names.
    pub async fn wait_settled(&self, pool: &str, n: i32) -> BTreeSet<String> {
        self.wait_settled_in(&self.ns, pool, n).await
    }

    /// Apply a pool with `minIdle: idle` and `maxRunners: max` and wait until it has settled at
    /// `idle` ([`World::wait_settled`]). Returns the runner names.
    pub async fn apply_settled(&self, pool: &str, idle: i32, max: i32) -> BTreeSet<String> {
        self.apply(pool, json!({"scaling": {"minIdle": idle, "maxRunners": max}})).await;
        self.wait_settled(pool, idle).await
    }

    /// [`World::wait_settled`] for a pool in namespace `ns`.
    pub async fn wait_settled_in(&self, ns: &str, pool: &str, n: i32) -> BTreeSet<String> {
        let got = eventually(T, || async {
            let p = self.get_pool_in(ns, pool).await?;
            if !ready_with(&p, n) {
                return None;
            }
            one_to_one_online(&self.sim, pool).filter(|names| names.len() == n as usize)
        })
        .await;
        match got {
            Some(names) => names,
            None => {
                let status = self.get_pool_in(ns, pool).await.and_then(|p| p.status);
                panic!("pool {pool}: never settled at {n}; status {status:#?}; {}", self.world(pool));
            }
        }
    }

    // --- events -------------------------------------------------------------------------------

    /// Events (events.k8s.io/v1) about a pool: (type, reason, note), oldest first.
    pub async fn events_of(&self, pool: &str) -> Vec<(String, String, String)> {
        self.events_of_in(&self.ns, pool).await
    }

    /// [`World::events_of`] for a pool in namespace `ns`.
    pub async fn events_of_in(&self, ns: &str, pool: &str) -> Vec<(String, String, String)> {
        use k8s_openapi::api::events::v1::Event;
        let list = Api::<Event>::namespaced(self.client.clone(), ns).list(&Default::default()).await.unwrap();
        let mut evs: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool))
            .collect();
        evs.sort_by_key(|e| e.metadata.creation_timestamp.clone());
        evs.into_iter()
            .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Wait (10 s) for an Event with this reason and a note containing `needle` about the pool.
    pub async fn expect_event(&self, pool: &str, reason: &str, needle: &str) {
        self.expect_event_in(&self.ns, pool, reason, needle).await
    }

    /// [`World::expect_event`] for a pool in namespace `ns`.
    pub async fn expect_event_in(&self, ns: &str, pool: &str, reason: &str, needle: &str) {
        let found = eventually(Duration::from_secs(10), || async {
            let events = self.events_of_in(ns, pool).await;
            events.iter().any(|(_, r, n)| r == reason && n.contains(needle)).then_some(())
        })
        .await;
        if found.is_none() {
            panic!(
                "no {reason} event mentioning {needle:?} for {pool}: {:?}",
                self.events_of_in(ns, pool).await
            );
        }
    }

    /// The Warning Events about the pool.
    pub async fn warnings_of(&self, pool: &str) -> Vec<(String, String, String)> {
        self.events_of(pool).await.into_iter().filter(|(t, _, _)| t == "Warning").collect()
    }

    /// No Warning Event about the pool.
    pub async fn expect_no_warnings(&self, pool: &str) {
        let warnings = self.warnings_of(pool).await;
        assert!(warnings.is_empty(), "warnings for {pool}: {warnings:?}");
    }

    /// Wait (15 s) for a Warning Event with `reason` about the pool; its note.
    pub async fn wait_warning(&self, pool: &str, reason: &str) -> String {
        let got = eventually(Duration::from_secs(15), || async {
            self.warnings_of(pool).await.into_iter().find(|(_, r, _)| r == reason).map(|(_, _, m)| m)
        })
        .await;
        match got {
            Some(m) => m,
            None => panic!("no Warning event {reason} for {pool}; events: {:#?}", self.events_of(pool).await),
        }
    }

    // --- jobs ---------------------------------------------------------------------------------

    /// Queue `count` jobs with these `runs-on` labels, each running `duration_secs`.
    pub fn enqueue(&self, labels: &[&str], duration_secs: f64, count: u32) -> Vec<JobRecord> {
        self.sim.github.enqueue_jobs(harness::jobs(labels, duration_secs, count)).unwrap()
    }

    /// Queue one `[aci]` job running `duration_secs`.
    pub fn enqueue_one(&self, duration_secs: f64) -> JobRecord {
        self.enqueue(&["aci"], duration_secs, 1).remove(0)
    }

    /// Wait until a runner of the pool is busy; panic if none takes a job.
    pub async fn wait_busy(&self, pool: &str) -> RunnerRecord {
        match eventually(T, || async { self.runners_of(pool).into_iter().find(|r| r.busy) }).await {
            Some(r) => r,
            None => panic!("no runner took the job\n{}", self.describe(pool).await),
        }
    }

    /// Queue one `[aci]` job running `duration_secs` and wait until a runner of the pool is busy.
    pub async fn busy_with_one_job(&self, pool: &str, duration_secs: f64) -> (JobRecord, RunnerRecord) {
        let job = self.enqueue_one(duration_secs);
        (job, self.wait_busy(pool).await)
    }

    /// The simulated job with this id, as it is now.
    pub fn job(&self, id: i64) -> JobRecord {
        self.sim.github.jobs().into_iter().find(|j| j.id == id).expect("the simulator has the job")
    }

    // --- the simulator's view -----------------------------------------------------------------

    /// Container groups of the simulator that carry the pool's name tag.
    pub fn groups_of(&self, pool: &str) -> Vec<GroupSummary> {
        harness::groups_of(&self.sim, pool)
    }

    /// Runner registrations of the simulator named `<pool>-…`.
    pub fn runners_of(&self, pool: &str) -> Vec<RunnerRecord> {
        harness::runners_of(&self.sim, pool)
    }

    /// What the simulator holds for a pool, for failure messages.
    pub fn world(&self, pool: &str) -> String {
        world(&self.sim, pool)
    }

    /// The pool's status, what the simulator holds for it, and the simulated jobs.
    pub async fn describe(&self, pool: &str) -> String {
        let status = self.get_pool(pool).await.map(|p| p.status);
        let jobs: Vec<_> = self
            .sim
            .github
            .jobs()
            .into_iter()
            .map(|j| (j.id, j.labels, j.status, j.conclusion, j.runner_name))
            .collect();
        format!("status {status:?}\n{}\njobs {jobs:?}", self.world(pool))
    }
}

/// What the simulator holds for a pool: groups `name@location(provisioning/state/containers)`,
/// runners `name#id(online busy)`.
pub fn world(sim: &Simulator, pool: &str) -> String {
    let groups: Vec<String> = harness::groups_of(sim, pool)
        .iter()
        .map(|g| {
            let c: Vec<String> =
                g.containers.iter().map(|c| format!("{}:{:?}", c.state, c.exit_code)).collect();
            format!("{}@{}({}/{}/{})", g.name, g.location, g.provisioning_state, g.state, c.join(","))
        })
        .collect();
    let runners: Vec<String> = harness::runners_of(sim, pool)
        .iter()
        .map(|r| format!("{}#{}(online={} busy={})", r.name, r.id, r.online, r.busy))
        .collect();
    format!("groups {groups:?}; runners {runners:?}")
}

/// Whether the pool has condition `type_` with `status` (and `reason`, if given).
pub fn cond_is(p: &RunnerPool, type_: &str, status: &str, reason: Option<&str>) -> bool {
    condition(p, type_).is_some_and(|(s, r)| s == status && reason.is_none_or(|want| r == want))
}

/// Ready with `idle` idle runners, none busy, desired `idle`, status of the current generation.
pub fn ready_with(p: &RunnerPool, idle: i32) -> bool {
    cond_is(p, "Ready", "True", None)
        && p.status.as_ref().is_some_and(|s| s.idle == idle && s.busy == 0 && s.desired == idle)
        && p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
}

/// Every container group of the pool has exactly one registration of the same name and every
/// registration of the pool has its group; all of them online. Returns the names.
pub fn one_to_one_online(sim: &Simulator, pool: &str) -> Option<BTreeSet<String>> {
    let groups = harness::groups_of(sim, pool);
    let runners = harness::runners_of(sim, pool);
    let group_names: BTreeSet<String> = groups.iter().map(|g| g.name.clone()).collect();
    let runner_names: BTreeSet<String> = runners.iter().map(|r| r.name.clone()).collect();
    (group_names.len() == groups.len()
        && runner_names.len() == runners.len()
        && group_names == runner_names
        && runners.iter().all(|r| r.online))
    .then_some(group_names)
}

/// The samples of metric family `name` (Prometheus text) whose line contains every filter
/// (`key="value"`), in order.
fn samples<'a>(text: &'a str, name: &'a str, filters: &'a [String]) -> impl Iterator<Item = f64> + 'a {
    let (open, plain) = (format!("{name}{{"), format!("{name} "));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| l.starts_with(&open) || l.starts_with(&plain))
        .filter(move |l| filters.iter().all(|f| l.contains(f.as_str())))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
}
