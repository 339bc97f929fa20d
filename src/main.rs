//! The `hale` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hale::actors::audit::Redactor;
use hale::actors::secrets::KnownSecrets;

mod dev;

/// hale: a self-healing runtime for AI agents.
#[derive(Debug, Parser)]
#[command(name = "hale", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented hale.toml showing every setting and its default.
    Init {
        /// Where to write it.
        #[arg(long, default_value = hale::config::DEFAULT_FILE)]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Watch hale heal four real faults: a timed-out API retried, a dead
    /// MCP server replaced by its backup, "already exists" checked instead
    /// of retried, a denied destructive command escalated to a human; then
    /// what it learned.
    Demo {
        /// Answer the approval of scenario 4 yourself (on stdin).
        #[arg(long)]
        interactive: bool,
        /// Keep the temporary data directory and print its path.
        #[arg(long)]
        keep: bool,
        /// Also print every audit event of each scenario.
        #[arg(long)]
        verbose: bool,
    },
    /// Show the supervision tree surviving kills, panics, a crash loop and
    /// a give-up (placeholder actors; the demo that came before `demo`).
    #[command(hide = true)]
    TreeDemo {
        /// Random faults to inject.
        #[arg(long, default_value_t = 200)]
        faults: usize,
        /// Milliseconds between faults.
        #[arg(long, default_value_t = 5)]
        gap_ms: u64,
        /// RNG seed (printed; replays a run).
        #[arg(long)]
        seed: Option<u64>,
        /// Print every restart and exit.
        #[arg(long)]
        verbose: bool,
    },
    /// Serve a fault-injecting MCP server (for hale's tests and demos).
    #[command(hide = true)]
    FaultMcp {
        /// Serve streamable HTTP at /mcp on this address instead of stdio
        /// (prints `listening on http://<addr>/mcp` once bound).
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// The first N tools/call requests behave as --fail-mode.
        #[arg(long, value_name = "N", default_value_t = 0)]
        fail_first: u64,
        /// ok|fail|rpc_error|crash|hang|garbage|sleep:<ms>
        #[arg(long, value_name = "MODE", default_value = "fail")]
        fail_mode: dev::fault_mcp::Behaviour,
        /// The N-th tools/call request crashes the process.
        #[arg(long, value_name = "N")]
        crash_on: Option<u64>,
        /// Append `<tool name>` to this file for every tools/call, before acting.
        #[arg(long, value_name = "PATH")]
        calls_file: Option<PathBuf>,
        /// serverInfo.name.
        #[arg(long, default_value = "fault-mcp")]
        name: String,
        /// Sleep this long before serving.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        startup_delay_ms: u64,
        /// Exit (code 0) this long after start.
        #[arg(long, value_name = "MS")]
        exit_after_ms: Option<u64>,
    },
    /// List sessions.
    Sessions {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a session.
    New {
        #[command(flatten)]
        api: ApiArgs,
        /// The agent.
        #[arg(long, default_value = "default")]
        agent: String,
    },
    /// Send a message to a session.
    Send {
        #[command(flatten)]
        api: ApiArgs,
        /// The session id.
        session: String,
        /// The message (a scripted plan, or text for a model).
        text: String,
        /// Wait up to this many seconds for the reply (at most 300).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// List open approvals.
    Approvals {
        #[command(flatten)]
        api: ApiArgs,
        /// Decided ones too.
        #[arg(long)]
        all: bool,
    },
    /// Decide an approval.
    Approve {
        #[command(flatten)]
        api: ApiArgs,
        /// The approval id.
        id: String,
        /// The option (or `abort`).
        option: Option<String>,
        /// Free-text instructions instead of an option.
        #[arg(long, conflicts_with = "option")]
        instructions: Option<String>,
    },
    /// Read the audit trail.
    Logs {
        #[command(flatten)]
        api: ApiArgs,
        /// debug, info, warning, error or critical: that level and above.
        #[arg(long)]
        level: Option<String>,
        /// RFC 3339 or relative (`1h`, `30m`).
        #[arg(long)]
        since: Option<String>,
        /// Text to find.
        #[arg(long)]
        grep: Option<String>,
        /// One session.
        #[arg(long)]
        session: Option<String>,
        /// How many past events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
    },
    /// Show the supervision tree.
    Tree {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List MCP servers, or enable/disable/restart one.
    Mcp {
        #[command(flatten)]
        api: ApiArgs,
        /// enable, disable or restart.
        #[arg(value_parser = ["enable", "disable", "restart"], requires = "name")]
        action: Option<String>,
        /// The server.
        name: Option<String>,
    },
    /// Kill random actors of a server started with --allow-chaos.
    Chaos {
        #[command(flatten)]
        api: ApiArgs,
        /// Kills per second (`50/s` or `50`).
        #[arg(long, default_value = "10/s")]
        rate: String,
        /// How long (`30s`, `2m`).
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Only actors of this kind (session, tool, mcp, model, memory, escalation, audit).
        #[arg(long)]
        kind: Option<String>,
    },
    /// Run the runtime and its HTTP API until SIGINT/SIGTERM.
    Serve {
        #[command(flatten)]
        config: hale::cli::ConfigArgs,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Enable `POST /v1/chaos/kill`.
        #[arg(long)]
        allow_chaos: bool,
    },
    /// Drive a runtime in this process: create sessions, send each a
    /// scripted `exec` plan, wait for every unfinished message (for crash
    /// tests; run again after a kill to see what was recovered).
    #[command(hide = true)]
    Drive {
        /// The data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Sessions to create.
        #[arg(long, default_value_t = 0)]
        sessions: usize,
        /// Messages per session.
        #[arg(long, default_value_t = 0)]
        messages: usize,
        /// The command of each message (`{s}`, `{m}`: session and message numbers).
        #[arg(long, default_value = "true")]
        command: String,
        /// Seconds to wait for each message.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Run one command confined (Landlock, network, limits, user): the
    /// wrapper `exec` runs every command through. See `hale::sandbox`.
    #[command(hide = true, name = "sandbox-exec")]
    SandboxExec(hale::sandbox::SandboxExecArgs),
    /// Measure the runtime end to end (figures in BENCHMARKS.md).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

/// Where the API is, how to authenticate, how to print.
#[derive(Debug, Clone, clap::Args)]
struct ApiArgs {
    /// The API's base URL.
    #[arg(long, env = "HALE_URL", default_value = "http://127.0.0.1:7878")]
    url: String,
    /// The server's data directory (for its token; or set HALE_TOKEN).
    #[arg(long, value_name = "DIR", default_value = ".hale")]
    data_dir: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<hale::client::Client> {
        hale::client::Client::new(&self.url, &self.data_dir, self.json)
    }
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Messages per second through sessions (scripted model, read_file),
    /// against the same tool call made directly through the dispatcher.
    Sessions {
        /// Sequential rounds (each runs every variant on a fresh session).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Messages per variant per round.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Sessions working at once in the concurrent phase.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Messages each of those sessions sends, one after the other.
        #[arg(long, default_value_t = 20)]
        per_session: usize,
        /// Messages to one long session (0: skip that phase).
        #[arg(long, default_value_t = 500)]
        long: usize,
        /// Parent of the temporary data directory (default: the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The sandbox's cost: p50 of `exec` running `true`, sandbox off and on.
    Exec {
        /// Calls per variant.
        #[arg(long, default_value_t = 500)]
        calls: usize,
        /// Parent of the temporary workspace (default: the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// RSS per idle session: create N sessions, report VmRSS before and after.
    Idle {
        /// How many to create.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Creations in flight at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Send each session one plain message first (so each has worked and gone idle).
        #[arg(long)]
        message: bool,
        /// `sessions`, or `actors` (bare ractor actors, for comparison).
        #[arg(long, default_value = "sessions")]
        kind: dev::bench::IdleKind,
        /// Parent of the temporary data directory (default: the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A `hale serve` child held under load, chaos kills, scrapes and
    /// event streams: answers exactly once, RSS and fds over time.
    Soak {
        /// How long the load lasts.
        #[arg(long, default_value = "2m", value_parser = hale::config::parse_duration)]
        duration: Duration,
        /// Messages per second.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Chaos kills per second (0: none).
        #[arg(long, default_value_t = 20.0)]
        chaos_rate: f64,
        /// How often `/metrics` is scraped.
        #[arg(long, default_value = "100ms", value_parser = hale::config::parse_duration)]
        scrape_every: Duration,
        /// `/v1/events` streams open and read.
        #[arg(long, default_value_t = 50)]
        streams: usize,
        /// `/v1/events` streams opened and never read.
        #[arg(long, default_value_t = 1)]
        idle_streams: usize,
        /// Sessions the messages go to, round robin.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        /// Connections sending messages, one at a time each.
        #[arg(long, default_value_t = 16)]
        senders: usize,
        /// The reference sample the end is compared with.
        #[arg(long, default_value = "10s", value_parser = hale::config::parse_duration)]
        checkpoint: Duration,
        /// How long to wait for the last answers after the load.
        #[arg(long, default_value = "2m", value_parser = hale::config::parse_duration)]
        drain: Duration,
        /// The hale binary to serve with [default: this one].
        #[arg(long)]
        hale: Option<PathBuf>,
        /// Parent of the temporary directory (default: the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stderr: in stdio mode stdout carries the protocol only.
/// `RUST_LOG` overrides the default filter.
/// Secrets are masked: the known values in `secrets` (the runtime adds
/// the token and keys it finds at start) and the patterns.
fn log_to_stderr(secrets: &KnownSecrets) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hale=info,rmcp=error"));
    let builder = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(filter);
    let _ = match Redactor::with_known(secrets.clone()) {
        Ok(redactor) => builder
            .with_writer(hale::masked_log::MaskedStderr::new(Arc::new(redactor)))
            .try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: a multi-threaded process cannot enter a
    // new user namespace.
    if let Command::SandboxExec(args) = &cli.command {
        return hale::sandbox::run(args);
    }
    if let Command::Init { path, force } = &cli.command {
        return match hale::config::write_template(path, *force) {
            Ok(()) => {
                println!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init { .. } | Command::SandboxExec(_) => Ok(()),
            Command::Demo {
                interactive,
                keep,
                verbose,
            } => {
                hale::demo::run(hale::demo::DemoOptions {
                    interactive,
                    keep,
                    verbose,
                })
                .await
            }
            Command::TreeDemo {
                faults,
                gap_ms,
                seed,
                verbose,
            } => {
                dev::tree_demo::run(dev::tree_demo::TreeDemoOptions {
                    faults,
                    gap: Duration::from_millis(gap_ms),
                    seed: seed.unwrap_or_else(|| fastrand::u64(..)),
                    verbose,
                })
                .await
            }
            Command::Sessions { api } => api.client()?.sessions().await,
            Command::New { api, agent } => api.client()?.new_session(&agent).await,
            Command::Send {
                api,
                session,
                text,
                wait,
            } => api.client()?.send(&session, &text, wait).await,
            Command::Approvals { api, all } => api.client()?.approvals(all).await,
            Command::Approve {
                api,
                id,
                option,
                instructions,
            } => {
                api.client()?
                    .approve(&id, option.as_deref(), instructions.as_deref())
                    .await
            }
            Command::Logs {
                api,
                level,
                since,
                grep,
                session,
                limit,
                follow,
            } => {
                api.client()?
                    .logs(&hale::client::LogFilter {
                        level,
                        since,
                        grep,
                        session,
                        limit,
                        follow,
                    })
                    .await
            }
            Command::Tree { api } => api.client()?.tree().await,
            Command::Mcp { api, action, name } => {
                let action = match (&action, &name) {
                    (Some(a), Some(n)) => Some((a.as_str(), n.as_str())),
                    _ => None,
                };
                api.client()?.mcp(action).await
            }
            Command::Chaos {
                api,
                rate,
                duration,
                kind,
            } => {
                let rate = hale::client::parse_rate(&rate)?;
                let duration = hale::config::parse_duration(&duration)
                    .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
                api.client()?.chaos(rate, duration, kind.as_deref()).await
            }
            Command::Serve {
                config,
                listen,
                allow_chaos,
            } => {
                let secrets = KnownSecrets::new();
                log_to_stderr(&secrets);
                hale::serve::run(hale::serve::ServeOptions {
                    config,
                    listen,
                    allow_chaos,
                    drain: Duration::from_secs(10),
                    secrets,
                })
                .await
            }
            Command::Drive {
                data_dir,
                sessions,
                messages,
                command,
                wait_secs,
            } => {
                log_to_stderr(&KnownSecrets::new());
                dev::drive::run(dev::drive::DriveOptions {
                    data_dir,
                    sessions,
                    messages,
                    command,
                    wait: Duration::from_secs(wait_secs),
                })
                .await
            }
            Command::FaultMcp {
                http,
                fail_first,
                fail_mode,
                crash_on,
                calls_file,
                name,
                startup_delay_ms,
                exit_after_ms,
            } => {
                log_to_stderr(&KnownSecrets::new());
                let listen = match http {
                    Some(addr) => dev::fault_mcp::Listen::Http(addr),
                    None => dev::fault_mcp::Listen::Stdio,
                };
                dev::fault_mcp::run(dev::fault_mcp::FaultMcpOptions {
                    listen,
                    name,
                    fail_first,
                    fail_mode,
                    crash_on,
                    calls_file,
                    startup_delay: Duration::from_millis(startup_delay_ms),
                    exit_after: exit_after_ms.map(Duration::from_millis),
                })
                .await
                .map_err(anyhow::Error::from)
            }
            Command::Bench { bench } => {
                log_to_stderr(&KnownSecrets::new());
                // Run on a worker thread, where hale's own callers live.
                let task = tokio::spawn(async move {
                    match bench {
                        BenchCommand::Sessions {
                            rounds,
                            messages,
                            sessions,
                            per_session,
                            long,
                            dir,
                        } => {
                            dev::bench::sessions(dev::bench::SessionsOptions {
                                rounds,
                                messages,
                                sessions,
                                per_session,
                                long,
                                dir,
                            })
                            .await
                        }
                        BenchCommand::Exec { calls, dir } => {
                            dev::bench::exec(dev::bench::ExecOptions { calls, dir }).await
                        }
                        BenchCommand::Idle {
                            sessions,
                            concurrency,
                            message,
                            kind,
                            dir,
                        } => {
                            dev::bench::idle(dev::bench::IdleOptions {
                                count: sessions,
                                concurrency,
                                message,
                                kind,
                                dir,
                            })
                            .await
                        }
                        BenchCommand::Soak {
                            duration,
                            rate,
                            chaos_rate,
                            scrape_every,
                            streams,
                            idle_streams,
                            sessions,
                            senders,
                            checkpoint,
                            drain,
                            hale,
                            dir,
                            json,
                        } => {
                            let hale = match hale {
                                Some(path) => path,
                                None => std::env::current_exe()
                                    .map_err(|e| anyhow::anyhow!("finding this binary: {e}"))?,
                            };
                            let report = dev::soak::run(dev::soak::SoakOptions {
                                duration,
                                rate,
                                chaos_rate,
                                scrape_every,
                                streams,
                                idle_streams,
                                sessions,
                                senders,
                                checkpoint,
                                drain,
                                dir,
                                ..dev::soak::SoakOptions::new(hale)
                            })
                            .await?;
                            if json {
                                println!("{}", serde_json::to_string_pretty(&report)?);
                            } else {
                                print!("{}", dev::soak::render(&report));
                            }
                            Ok(())
                        }
                    }
                });
                task.await.map_err(anyhow::Error::from).and_then(|r| r)
            }
        }
    });
    // A read of stdin still pending (an operator who never answered) must
    // not keep the process alive: blocking tasks get a moment, no more.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
