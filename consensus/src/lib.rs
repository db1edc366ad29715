//! quarry-consensus: durable Raft on raft-rs (see the consensus issue).
