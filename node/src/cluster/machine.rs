//! The cluster state as Raft's state machine: [`ClusterState`] plus a watch channel on which
//! the server list is published each time it changes, so the transport's address book, the
//! peers file and the API see who is where without asking the Raft task.
//!
//! Publishing is the only thing this wrapper adds, and it does not influence the state: the
//! channel is written, never read, from inside `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;

use quarry_consensus::{MachineError, StateMachine};
use tokio::sync::watch;

use super::state::{ClusterState, Command, Outcome, Refusal, ServerRecord};

/// The servers by name, as last applied.
pub type ServerMap = BTreeMap<String, ServerRecord>;

/// [`ClusterState`] under Raft.
#[derive(Debug)]
pub struct ClusterMachine {
    /// The state.
    pub state: ClusterState,
    servers: watch::Sender<Arc<ServerMap>>,
}

impl ClusterMachine {
    /// An empty state, and the receiving end of its server list.
    pub fn new() -> (ClusterMachine, watch::Receiver<Arc<ServerMap>>) {
        let (tx, rx) = watch::channel(Arc::new(ServerMap::new()));
        (
            ClusterMachine {
                state: ClusterState::default(),
                servers: tx,
            },
            rx,
        )
    }

    fn publish(&self) {
        self.servers
            .send_replace(Arc::new(self.state.servers.clone()));
    }
}

impl StateMachine for ClusterMachine {
    type Command = Command;
    type Output = Result<Outcome, Refusal>;

    fn apply(&mut self, index: u64, command: Command) -> Self::Output {
        let touches_servers = matches!(
            command,
            Command::Found { .. }
                | Command::AddServer { .. }
                | Command::UpdateServer { .. }
                | Command::RemoveServer { .. }
        );
        let out = self.state.apply(index, command);
        if touches_servers && out.is_ok() {
            self.publish();
        }
        out
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        Ok(quarry_consensus::codec::encode(&self.state)?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), MachineError> {
        self.state = quarry_consensus::codec::decode(snapshot)?;
        self.publish();
        Ok(())
    }
}
