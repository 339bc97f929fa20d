//! An MCP layer under its supervisor with a dispatcher in front, torn
//! down (processes included) at the end of each test.

use std::sync::Arc;
use std::time::Duration;

use hale::actors::dispatch::{DispatchConfig, Dispatcher, Endpoints, Router, ToolContext};
use hale::actors::mcp::{McpRouter, McpServerConfig, McpServers};
use hale::actors::{EventKind, MemorySink, ToolOutcome};
use hale::supervision::SupervisorRef;
use serde_json::Value;

use crate::support::{alive, kill_group};

/// How long a test waits for a server to connect.
pub const READY_WAIT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub servers: Arc<McpServers>,
    pub dispatcher: Dispatcher,
    pub sink: Arc<MemorySink>,
    pub supervisor: SupervisorRef,
    pids: std::sync::Mutex<Vec<u32>>,
}

impl Harness {
    pub async fn start(configs: Vec<McpServerConfig>, dispatch: DispatchConfig) -> Harness {
        let sink = Arc::new(MemorySink::new());
        let servers = McpServers::new(configs, sink.clone()).unwrap();
        let supervisor = servers.start("hale/mcp").await.unwrap();
        let routers: Vec<Arc<dyn Router>> = vec![Arc::new(McpRouter::new(servers.clone()))];
        let dispatcher = Dispatcher::new(
            routers,
            Arc::new(Endpoints::new(dispatch).unwrap()),
            sink.clone(),
        );
        Harness {
            servers,
            dispatcher,
            sink,
            supervisor,
            pids: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Waits until `server` is ready, remembering its pid for clean-up.
    pub async fn ready(&self, server: &str) {
        let ok = self.servers.wait_ready(server, READY_WAIT).await.unwrap();
        let status = self.servers.status(server).unwrap();
        assert!(
            ok,
            "{server} not ready within {READY_WAIT:?}: {:?}",
            status.last_error
        );
        self.remember(server);
    }

    /// Records the current pid of `server` for the final clean-up.
    pub fn remember(&self, server: &str) {
        if let Some(pid) = self.servers.status(server).unwrap().pid {
            self.pids.lock().unwrap().push(pid);
        }
    }

    pub fn pid(&self, server: &str) -> u32 {
        self.servers.status(server).unwrap().pid.unwrap()
    }

    pub async fn call(&self, tool: &str, args: Value) -> ToolOutcome {
        self.dispatcher
            .call(tool, args, &ToolContext::default())
            .await
    }

    pub fn count(&self, kind: EventKind) -> usize {
        self.sink.events().iter().filter(|e| e.kind == kind).count()
    }

    /// Stops the tree and makes sure no server process outlives the test;
    /// returns how many had to be killed by hand (0 when the actors
    /// cleaned up after themselves, as they must).
    pub async fn shutdown(self) -> usize {
        let names = self.servers.names();
        for name in &names {
            self.remember(name);
        }
        let _ = self.supervisor.shutdown(Duration::from_secs(10)).await;
        let pids = self.pids.lock().unwrap().clone();
        // The services close asynchronously; give them a moment, then make
        // sure.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while pids.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut leaked = 0;
        for pid in pids {
            if alive(pid) {
                eprintln!("server process {pid} outlived its actor; killing its group");
                kill_group(pid);
                leaked += 1;
            }
        }
        leaked
    }
}
