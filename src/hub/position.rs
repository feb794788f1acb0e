//! A position in a session's log: what live delivery (the registry) and a
//! large session's fan-out task (`hub/fanout.rs`) both keep.

/// A position in a session's log: the log's epoch (it changes when the log
/// was lost and began again) and an offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}
