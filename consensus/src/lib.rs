//! quarry-consensus: durable Raft on raft-rs (essay below is filled in).

pub mod codec;
mod error;
mod handle;
mod machine;
pub mod memnet;
mod node;
pub mod storage;
pub mod transport;

pub use error::{ClientError, NodeError};
pub use handle::{Handle, Role, Status};
pub use machine::{IdempotencyKey, MachineError, StateMachine};
pub use node::{start, NodeConfig, NodeTask, ReadMode};
