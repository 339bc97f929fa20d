//! `hale sandbox-exec`: the wrapper that confines one `exec` command.
//!
//! The agent is untrusted, and `exec` is where it reaches the machine. The
//! workspace lints forbid `unsafe`, so hale cannot restrict a child in a
//! `pre_exec` hook; instead `exec` runs this hidden subcommand of the hale
//! binary, which restricts *itself* and then execs the command (the same
//! pid, so `exec`'s process-group, timeout and kill machinery is unchanged).
//! The policy comes as arguments ([`SandboxExecArgs`], spelled by
//! `hale_actors::builtin::SandboxConfig::wrapper_args`). The order is
//! fixed, because each step needs the privileges the next one drops:
//!
//! 1. **network**: for `none`, a fresh network namespace (`unshare`;
//!    as non-root together with a user namespace mapping only our own ids),
//!    so there is no route out at all, not even to hale's API on loopback;
//! 2. **rules**: the Landlock ruleset is created and its paths opened while
//!    we may still traverse every directory (as root);
//! 3. **limits**: `setrlimit` for processes, file size, CPU time and
//!    address space;
//! 4. **user**: as root, `setgroups`/`setgid`/`setuid` to the sandbox user
//!    (root keeps capabilities under Landlock, and process limits do not
//!    bind root);
//! 5. **restrict**: `no_new_privs` and the ruleset are enforced;
//! 6. **exec** of the command.
//!
//! The Landlock rules: read, write and execute in the workspace and the
//! private TMPDIR; read and execute in `/usr`, `/bin`, `/sbin`, `/lib*` and
//! `/etc`; read and write `/dev/null` (shells redirect to it), read
//! `/dev/zero`, `/dev/random` and `/dev/urandom` (programs seed from them).
//! Nothing else: not the data directory (token, `hale.db`, `pgroups/`,
//! config), not `/proc` (so no other process's `environ` or `cmdline`;
//! `/proc/self` and `/dev/fd` are unavailable too, which breaks bash
//! process substitution), not `/home`, `/root`, `/opt` or `/tmp` outside
//! the private TMPDIR. Signals and abstract Unix sockets are scoped to the
//! sandbox (Landlock ABI 6 and later). With `tcp:PORTS`, TCP connect is
//! allowed to those ports only and TCP bind nowhere; UDP and Unix sockets
//! are not covered by Landlock's network rules.
//!
//! A kernel without Landlock is a failure ([`EXIT_LANDLOCK_UNAVAILABLE`]),
//! never an unconfined run; any other failed step exits with
//! [`EXIT_SETUP_FAILED`]. Both print one line starting with
//! [`WRAPPER_PREFIX`] on stderr, which `exec` turns into a typed outcome.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hale_actors::builtin::sandbox::{EXIT_LANDLOCK_UNAVAILABLE, EXIT_SETUP_FAILED, WRAPPER_PREFIX};
use hale_actors::builtin::{NetworkPolicy, SandboxConfig, SandboxMode, SandboxUser};
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, User, getegid, geteuid, setgid, setgroups, setuid};

/// The highest Landlock ABI whose rights this wrapper asks for (best
/// effort: an older kernel enforces what it knows).
const TARGET_ABI: ABI = ABI::V7;

/// Directories the command may read and execute from.
const READ_ONLY_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Devices the command may read.
const READ_DEVICES: &[&str] = &["/dev/zero", "/dev/random", "/dev/urandom"];

/// The wrapper's arguments; see the module docs.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxExecArgs {
    /// The workspace: readable, writable, executable.
    #[arg(long, value_name = "DIR")]
    pub workspace: PathBuf,
    /// The private TMPDIR: readable, writable, executable.
    #[arg(long, value_name = "DIR")]
    pub tmp: PathBuf,
    /// `none`, `all` or `tcp:PORT,PORT`.
    #[arg(long, default_value = "none")]
    pub network: String,
    /// When running as root, the user to run the command as.
    #[arg(long)]
    pub user: Option<String>,
    /// `RLIMIT_NPROC`.
    #[arg(long)]
    pub max_processes: Option<u64>,
    /// `RLIMIT_FSIZE`, bytes.
    #[arg(long)]
    pub max_file_size: Option<u64>,
    /// `RLIMIT_CPU`, seconds.
    #[arg(long)]
    pub cpu_time: Option<u64>,
    /// `RLIMIT_AS`, bytes.
    #[arg(long)]
    pub address_space: Option<u64>,
    /// The program and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<OsString>,
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel has no (enabled) Landlock.
    #[error("Landlock is not available on this kernel: {0}")]
    Unavailable(String),
    /// Another step failed.
    #[error("{step}: {message}")]
    Setup {
        /// Which step.
        step: &'static str,
        /// What went wrong.
        message: String,
    },
}

fn setup(step: &'static str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Setup {
        step,
        message: e.to_string(),
    }
}

/// Checks that the kernel enforces Landlock (ABI 1 at least): creates,
/// and drops, a ruleset without restricting anything. The runtime calls
/// this once at start; the wrapper again before it applies its rules.
///
/// # Errors
/// [`SandboxError::Unavailable`] saying what the kernel answered.
pub fn probe() -> Result<(), SandboxError> {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(Ruleset::create)
        .map(drop)
        .map_err(|e| SandboxError::Unavailable(e.to_string()))
}

/// The default `[tools.sandbox] helper`: the running program, when it is
/// the hale binary (`hale serve`, `hale demo`); `None` for a program that
/// embeds the runtime, which must set the helper itself.
pub fn default_helper() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    (exe.file_name()? == "hale").then_some(exe)
}

/// Readies a sandbox configuration at runtime start: in `landlock` mode,
/// probes the kernel once (a missing Landlock is recorded in
/// `unavailable`, so `exec` refuses and says why) and, when hale runs as
/// root, resolves `run_as` into the user commands run as.
///
/// # Errors
/// `run_as` names no user on this machine.
pub fn prepare(sandbox: &mut SandboxConfig) -> Result<(), SandboxError> {
    if sandbox.mode == SandboxMode::Off {
        return Ok(());
    }
    if let Err(e) = probe() {
        tracing::warn!(target: "hale::sandbox", "exec will refuse every command: {e}");
        sandbox.unavailable = Some(e.to_string());
    }
    sandbox.user = None;
    if geteuid().is_root() {
        let name = sandbox.run_as.clone();
        let user = User::from_name(&name)
            .map_err(|e| setup("user", format!("`{name}`: {e}")))?
            .ok_or_else(|| setup("user", format!("no user `{name}` on this machine")))?;
        if !user.uid.is_root() {
            sandbox.user = Some(SandboxUser {
                name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            });
        }
    }
    Ok(())
}

/// Runs the wrapper: confines this process and execs the command. Returns
/// only when something failed, with the exit code to leave with (the
/// command did not run).
pub fn run(args: &SandboxExecArgs) -> ExitCode {
    let error = match confine(args) {
        Ok(()) => {
            let Some((program, rest)) = args.command.split_first() else {
                return fail(&setup("exec", "no command given"));
            };
            let err = std::process::Command::new(program).args(rest).exec();
            setup("exec", format!("{}: {err}", Path::new(program).display()))
        }
        Err(e) => e,
    };
    fail(&error)
}

fn fail(error: &SandboxError) -> ExitCode {
    eprintln!("{WRAPPER_PREFIX} {error}; the command did not run");
    let code = match error {
        SandboxError::Unavailable(_) => EXIT_LANDLOCK_UNAVAILABLE,
        SandboxError::Setup { .. } => EXIT_SETUP_FAILED,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
}

/// Steps 1 to 5 of the module docs.
fn confine(args: &SandboxExecArgs) -> Result<(), SandboxError> {
    let network = NetworkPolicy::parse(&args.network).map_err(|e| setup("network", e))?;
    probe()?;
    let root = geteuid().is_root();
    if network == NetworkPolicy::None {
        isolate_network(root)?;
    }
    let ruleset = ruleset(args, &network)?;
    limits(args)?;
    if root && let Some(name) = &args.user {
        drop_to(name)?;
    }
    let status = ruleset.restrict_self().map_err(|e| setup("landlock", e))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(SandboxError::Unavailable(
            "the ruleset was not enforced".into(),
        ));
    }
    Ok(())
}

/// A fresh network namespace: only a loopback interface, down.
fn isolate_network(root: bool) -> Result<(), SandboxError> {
    if root {
        return unshare(CloneFlags::CLONE_NEWNET).map_err(|e| setup("network namespace", e));
    }
    // Unprivileged: a user namespace first, mapping only our own ids, so
    // the command keeps its identity and gains nothing outside.
    let (uid, gid) = (geteuid(), getegid());
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET)
        .map_err(|e| setup("network namespace", e))?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| setup("user namespace", format!("{file}: {e}")))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

/// The Landlock ruleset, with its paths opened now (before the user
/// changes, while every ancestor is still traversable).
fn ruleset(
    args: &SandboxExecArgs,
    network: &NetworkPolicy,
) -> Result<RulesetCreated, SandboxError> {
    let landlock = |e: landlock::RulesetError| setup("landlock", e);
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let mut ruleset = Ruleset::default()
        // Filesystem rights of ABI 1 are the boundary: required.
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(landlock)?
        // Newer rights (refer, truncate, ioctl) where the kernel has them.
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(landlock)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(landlock)?;
    match network {
        NetworkPolicy::All => {}
        // The namespace already cuts every route; denying TCP too is
        // defence in depth where the kernel can.
        NetworkPolicy::None => {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(TARGET_ABI))
                .map_err(landlock)?;
        }
        // The port list is the only network boundary: required.
        NetworkPolicy::Tcp(_) => {
            ruleset = ruleset
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessNet::from_all(ABI::V4))
                .map_err(landlock)?
                .set_compatibility(CompatLevel::BestEffort);
        }
    }
    let mut created = ruleset.create().map_err(landlock)?;
    for dir in [&args.workspace, &args.tmp] {
        let fd = landlock::PathFd::new(dir)
            .map_err(|e| setup("landlock", format!("{}: {e}", dir.display())))?;
        created = created
            .add_rule(landlock::PathBeneath::new(fd, all))
            .map_err(landlock)?;
    }
    // Missing paths (no /lib32 here) are skipped by `path_beneath_rules`.
    created = created
        .add_rules(path_beneath_rules(READ_ONLY_DIRS, read))
        .map_err(landlock)?
        .add_rules(path_beneath_rules(
            ["/dev/null"],
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
        ))
        .map_err(landlock)?
        .add_rules(path_beneath_rules(READ_DEVICES, AccessFs::ReadFile))
        .map_err(landlock)?;
    if let NetworkPolicy::Tcp(ports) = network {
        for port in ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(landlock)?;
        }
    }
    Ok(created)
}

/// The resource limits (soft and hard alike, so the command cannot raise
/// them back).
fn limits(args: &SandboxExecArgs) -> Result<(), SandboxError> {
    let limits = [
        (Resource::RLIMIT_NPROC, args.max_processes),
        (Resource::RLIMIT_FSIZE, args.max_file_size),
        (Resource::RLIMIT_CPU, args.cpu_time),
        (Resource::RLIMIT_AS, args.address_space),
    ];
    for (resource, value) in limits {
        if let Some(value) = value {
            setrlimit(resource, value, value)
                .map_err(|e| setup("limits", format!("{resource:?} = {value}: {e}")))?;
        }
    }
    Ok(())
}

/// Becomes `name` for good: supplementary groups, group, then user.
fn drop_to(name: &str) -> Result<(), SandboxError> {
    let user = User::from_name(name)
        .map_err(|e| setup("user", format!("`{name}`: {e}")))?
        .ok_or_else(|| setup("user", format!("no user `{name}`")))?;
    if user.uid.is_root() {
        return Ok(());
    }
    let gid: Gid = user.gid;
    let uid: Uid = user.uid;
    setgroups(&[gid]).map_err(|e| setup("user", format!("setgroups: {e}")))?;
    setgid(gid).map_err(|e| setup("user", format!("setgid: {e}")))?;
    setuid(uid).map_err(|e| setup("user", format!("setuid: {e}")))?;
    Ok(())
}
