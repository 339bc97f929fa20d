//! The policy `exec` runs commands under, and the command line that hands
//! it to the sandbox wrapper.
//!
//! The agent is untrusted: whatever a model was talked into, its shell
//! commands must not reach hale's token, database, keys or API. The
//! restriction itself (Landlock rules, a network namespace, resource
//! limits, an unprivileged user) is applied by a separate program, the
//! hidden `hale sandbox-exec` wrapper, which restricts itself and then
//! execs the command; that keeps `unsafe` `pre_exec` hooks out of hale.
//! This crate does not depend on the binary, so this module only
//! describes the policy ([`SandboxConfig`]), spells it as the wrapper's
//! arguments ([`SandboxConfig::wrapper_args`]) and builds the environment a
//! command gets ([`SandboxConfig::command_env`]): built from a short list,
//! never inherited, so model keys and `HALE_TOKEN` stay in hale.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The wrapper's exit code when the kernel has no Landlock: the command
/// did not run, and would not have run unsandboxed.
pub const EXIT_LANDLOCK_UNAVAILABLE: i32 = 121;
/// The wrapper's exit code when any other step of the sandbox setup failed
/// (namespace, limits, user, rules, exec): the command did not run.
pub const EXIT_SETUP_FAILED: i32 = 122;
/// How every message of the wrapper about itself starts on stderr, so
/// `exec` can tell a sandbox failure from a command that exited 121.
pub const WRAPPER_PREFIX: &str = "hale sandbox-exec:";
/// The user commands run as when hale runs as root, unless configured.
pub const DEFAULT_USER: &str = "nobody";
/// The subcommand of the hale binary that is the wrapper.
pub const WRAPPER_SUBCOMMAND: &str = "sandbox-exec";

/// Whether `exec` runs commands in the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every command runs through the wrapper under Landlock (default).
    #[default]
    Landlock,
    /// Commands run directly, unconfined: only as the operator's explicit
    /// choice (`[tools.sandbox] mode = "off"`).
    Off,
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Landlock => "landlock",
            Self::Off => "off",
        })
    }
}

/// What a sandboxed command may reach on the network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkPolicy {
    /// A fresh network namespace: no route out at all (default).
    #[default]
    None,
    /// TCP connections to these ports only (Landlock connect rules); TCP
    /// bind is denied. UDP and Unix sockets are not covered.
    Tcp(Vec<u16>),
    /// Unrestricted: only as the operator's explicit choice.
    All,
}

impl NetworkPolicy {
    /// The wrapper's spelling: `none`, `all` or `tcp:80,443` (`tcp:` for
    /// no port at all).
    pub fn to_arg(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::All => "all".into(),
            Self::Tcp(ports) => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("tcp:{}", ports.join(","))
            }
        }
    }

    /// Parses [`to_arg`](Self::to_arg)'s spelling.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            _ => {
                let Some(list) = s.strip_prefix("tcp:") else {
                    return Err(format!(
                        "network must be `none`, `all` or `tcp:PORT,PORT`, got `{s}`"
                    ));
                };
                list.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        p.trim()
                            .parse::<u16>()
                            .map_err(|e| format!("bad port `{p}` in `{s}`: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Self::Tcp)
            }
        }
    }
}

impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_arg())
    }
}

/// Resource limits of a sandboxed command (`None`: left as inherited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// `RLIMIT_NPROC`: processes (threads included) of the user the
    /// command runs as.
    pub max_processes: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file the command may write, in bytes.
    pub max_file_size: Option<u64>,
    /// `RLIMIT_CPU`: CPU seconds per process.
    pub cpu_time: Option<u64>,
    /// `RLIMIT_AS`: address space per process, in bytes.
    pub address_space: Option<u64>,
}

impl SandboxLimits {
    /// The defaults: 512 processes, 1 GiB files, 600 CPU seconds (the
    /// longest `exec` timeout) and 16 GiB of address space. V8 reserves
    /// several GiB of virtual memory up front (its pointer cage, the
    /// WebAssembly guard regions), so Node fails to start under a few GiB
    /// of `RLIMIT_AS`; 16 GiB leaves it room while still stopping a
    /// runaway allocation before it eats the machine's swap.
    pub const DEFAULT: Self = Self {
        max_processes: Some(512),
        max_file_size: Some(1 << 30),
        cpu_time: Some(600),
        address_space: Some(16 << 30),
    };
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The unprivileged user commands run as when hale runs as root, resolved
/// by the runtime at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUser {
    /// The name the wrapper switches to.
    pub name: String,
    /// Its uid (owner of the workspace and the private TMPDIR).
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// How `exec` confines the commands it runs. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Landlock (default) or off.
    pub mode: SandboxMode,
    /// The wrapper: a hale binary (its `sandbox-exec` subcommand). `None`:
    /// `exec` refuses to run in `landlock` mode.
    pub helper: Option<PathBuf>,
    /// The user commands run as when hale runs as root (`[tools.sandbox]
    /// user`, default `nobody`); ignored otherwise.
    pub run_as: String,
    /// [`run_as`](Self::run_as) resolved, set by the runtime at start when
    /// hale runs as root and `run_as` is not root: commands run as this
    /// user, who owns the workspace and the private TMPDIR.
    pub user: Option<SandboxUser>,
    /// The network policy.
    pub network: NetworkPolicy,
    /// Resource limits.
    pub limits: SandboxLimits,
    /// Names of hale's environment variables passed on to commands, beyond
    /// `PATH`, `LANG` and `TERM`.
    pub env: Vec<String>,
    /// Why the sandbox cannot be used on this machine (the runtime's probe
    /// at start: no Landlock); `exec` then refuses every command and says
    /// this, unless the mode is off.
    pub unavailable: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            mode: SandboxMode::Landlock,
            helper: None,
            run_as: DEFAULT_USER.to_owned(),
            user: None,
            network: NetworkPolicy::None,
            limits: SandboxLimits::DEFAULT,
            env: Vec::new(),
            unavailable: None,
        }
    }
}

impl SandboxConfig {
    /// What is in force, for start lines and the tree: `off`,
    /// `landlock (network none, as nobody)`, or `landlock unavailable: why`.
    pub fn describe(&self) -> String {
        match (self.mode, &self.unavailable, &self.helper) {
            (SandboxMode::Off, _, _) => "off".into(),
            (SandboxMode::Landlock, Some(why), _) => {
                format!("landlock unavailable, exec refused: {why}")
            }
            (SandboxMode::Landlock, None, None) => "landlock without a helper, exec refused".into(),
            (SandboxMode::Landlock, None, Some(_)) => {
                let user = self
                    .user
                    .as_ref()
                    .map(|u| format!(", as {}", u.name))
                    .unwrap_or_default();
                format!("landlock (network {}{user})", self.network)
            }
        }
    }

    /// No sandbox: commands run directly (the environment is still built,
    /// not inherited).
    pub fn off() -> Self {
        Self {
            mode: SandboxMode::Off,
            ..Self::default()
        }
    }

    /// The wrapper's arguments, from `sandbox-exec` to the `--` that
    /// precedes the command: the workspace and private TMPDIR (the only
    /// writable places), the network policy, the user and the limits.
    pub fn wrapper_args(&self, workspace: &Path, tmp: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            WRAPPER_SUBCOMMAND.into(),
            "--workspace".into(),
            workspace.into(),
            "--tmp".into(),
            tmp.into(),
            "--network".into(),
            self.network.to_arg().into(),
        ];
        if let Some(user) = &self.user {
            args.push("--user".into());
            args.push(user.name.clone().into());
        }
        let limits = [
            ("--max-processes", self.limits.max_processes),
            ("--max-file-size", self.limits.max_file_size),
            ("--cpu-time", self.limits.cpu_time),
            ("--address-space", self.limits.address_space),
        ];
        for (flag, value) in limits {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value.to_string().into());
            }
        }
        args.push("--".into());
        args
    }

    /// The whole environment of a command: `PATH`, `LANG` and `TERM` (hale's
    /// own, or defaults), `HOME` = the workspace, `TMPDIR` = `tmp` when
    /// given, then each variable named in [`env`](Self::env) that hale
    /// has. Nothing else of hale's environment.
    pub fn command_env(&self, workspace: &Path, tmp: Option<&Path>) -> Vec<(OsString, OsString)> {
        let var = |name: &str, default: &str| {
            std::env::var_os(name).unwrap_or_else(|| OsString::from(default))
        };
        let mut env = vec![
            ("PATH".into(), var("PATH", "/usr/local/bin:/usr/bin:/bin")),
            ("LANG".into(), var("LANG", "C.UTF-8")),
            ("TERM".into(), var("TERM", "dumb")),
            ("HOME".into(), workspace.as_os_str().to_owned()),
        ];
        if let Some(tmp) = tmp {
            env.push(("TMPDIR".into(), tmp.as_os_str().to_owned()));
        }
        for name in &self.env {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.into(), value));
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn network_round_trips() {
        for policy in [
            NetworkPolicy::None,
            NetworkPolicy::All,
            NetworkPolicy::Tcp(vec![]),
            NetworkPolicy::Tcp(vec![80, 443]),
        ] {
            assert_eq!(NetworkPolicy::parse(&policy.to_arg()).unwrap(), policy);
        }
        assert!(NetworkPolicy::parse("tcp:80,x").is_err());
        assert!(NetworkPolicy::parse("udp").is_err());
    }

    #[test]
    fn env_is_built_not_inherited() {
        let config = SandboxConfig {
            env: vec!["HALE_SANDBOX_TEST_UNSET_VAR".into()],
            ..SandboxConfig::default()
        };
        let env = config.command_env(Path::new("/w"), Some(Path::new("/t")));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_string_lossy()).collect();
        assert_eq!(names, ["PATH", "LANG", "TERM", "HOME", "TMPDIR"]);
    }
}
