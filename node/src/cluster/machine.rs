//! The cluster state as Raft's state machine: [`ClusterState`] plus a watch channel on which
//! the server list is published each time it changes, so the transport's address book, the
//! peers file and the API see who is where without asking the Raft task.
//!
//! The recorded voter replacements are published the same way (for status).
//!
//! Publishing is the only thing this wrapper adds, and it does not influence the state: the
//! channel is written, never read, from inside `apply`.

use std::collections::BTreeMap;
use std::sync::Arc;

use quarry_consensus::{MachineError, StateMachine};
use tokio::sync::watch;

use super::state::{ClusterState, Command, Outcome, Refusal, ServerRecord, VoterReplacement};

/// The servers by name, as last applied.
pub type ServerMap = BTreeMap<String, ServerRecord>;

/// The recorded voter replacements, as last applied.
pub type Replacements = Vec<VoterReplacement>;

/// What [`ClusterMachine::watches`] gives.
#[derive(Debug, Clone)]
pub struct Watches {
    /// The recorded voter replacements.
    pub replacements: watch::Receiver<Arc<Replacements>>,
    /// The cluster version in force.
    pub version: watch::Receiver<u32>,
}

/// [`ClusterState`] under Raft.
#[derive(Debug)]
pub struct ClusterMachine {
    /// The state.
    pub state: ClusterState,
    servers: watch::Sender<Arc<ServerMap>>,
    replacements: watch::Sender<Arc<Replacements>>,
    version: watch::Sender<u32>,
}

impl ClusterMachine {
    /// An empty state, and the receiving end of its server list.
    pub fn new() -> (ClusterMachine, watch::Receiver<Arc<ServerMap>>) {
        let (tx, rx) = watch::channel(Arc::new(ServerMap::new()));
        (
            ClusterMachine {
                state: ClusterState::default(),
                servers: tx,
                replacements: watch::channel(Arc::new(Replacements::new())).0,
                version: watch::channel(1).0,
            },
            rx,
        )
    }

    /// Receivers of what the machine publishes besides the server list (take them before
    /// the machine is started).
    pub fn watches(&self) -> Watches {
        Watches {
            replacements: self.replacements.subscribe(),
            version: self.version.subscribe(),
        }
    }

    fn publish(&self) {
        self.servers
            .send_replace(Arc::new(self.state.servers.clone()));
    }

    fn publish_replacements(&self) {
        self.replacements
            .send_replace(Arc::new(self.state.replacements.clone()));
    }
}

impl StateMachine for ClusterMachine {
    type Command = Command;
    type Output = Result<Outcome, Refusal>;
    const FORMAT: u8 = crate::version::STATE_VERSION_MAX as u8;

    fn format_of(command: &Command) -> u8 {
        command.format()
    }

    fn apply(&mut self, index: u64, command: Command) -> Self::Output {
        let touches_servers = matches!(
            command,
            Command::Found { .. }
                | Command::AddServer { .. }
                | Command::UpdateServer { .. }
                | Command::RemoveServer { .. }
        );
        let records = matches!(command, Command::RecordReplacement(_));
        let out = self.state.apply(index, command);
        if touches_servers && out.is_ok() {
            self.publish();
        }
        if records && out.is_ok() {
            self.publish_replacements();
        }
        self.version.send_if_modified(|v| {
            let changed = *v != self.state.cluster_version;
            *v = self.state.cluster_version;
            changed
        });
        out
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        Ok(super::versions::encode_state(&self.state)?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), MachineError> {
        self.state = super::versions::decode_state(snapshot)?;
        self.publish();
        self.publish_replacements();
        self.version.send_replace(self.state.cluster_version);
        Ok(())
    }
}
