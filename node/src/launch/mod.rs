//! Launch: stacks on the cluster (wip).

pub mod compile;

pub use compile::{compile, CompileError, Compiled, PlanInputs, ServerFacts};
