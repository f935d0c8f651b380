pub mod raft;
pub mod delta;
