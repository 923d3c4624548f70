//! The command-line tools the chart and docs tests drive: helm (installed by `scripts/helm`) and
//! kubectl (the machine's, else the one `scripts/helm` extracted next to helm).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The cached helm binary; panics with the install command when it is missing (tests fail, never
/// skip, without it).
pub fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script = super::repo_root().join("scripts/helm");
        let out = Command::new("bash").arg(&script).arg("--path").output();
        let path = out.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        match (&out, path) {
            (Ok(o), Ok(p)) if o.status.success() && !p.is_empty() => PathBuf::from(p),
            _ => panic!(
                "helm is missing: install it with `scripts/helm version` (or run `scripts/test`): {out:?}"
            ),
        }
    })
}

/// The machine's kubectl (its absolute path, so that it can be linked into a `PATH` of its own),
/// else the one `scripts/helm` extracted next to helm.
pub fn kubectl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let which = Command::new("bash").arg("-c").arg("command -v kubectl").output();
        match which {
            Ok(o) if o.status.success() && !o.stdout.trim_ascii().is_empty() => {
                PathBuf::from(String::from_utf8_lossy(o.stdout.trim_ascii()).into_owned())
            }
            _ => helm_bin().with_file_name("kubectl"),
        }
    })
}

/// Run `program` (a path) with `args`, `KUBECONFIG` = `kubeconfig` and helm state kept in
/// `helm_home` (no user repositories, plugins or caches leak in); `stdin` is fed when given.
pub fn run(
    program: &Path,
    args: &[&str],
    kubeconfig: &Path,
    helm_home: &Path,
    stdin: Option<&[u8]>,
) -> std::io::Result<Output> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    child.wait_with_output()
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}
