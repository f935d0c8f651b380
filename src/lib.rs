pub mod delta;
pub mod raft;
