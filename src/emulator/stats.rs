//! Counts of the Chime requests the emulator received and how it answered them, by operation:
//! what a load or fault test reads to know what reached "Chime" (`GET /_emulator/stats`).
//!
//! Plain counters; knows nothing of the wire beyond a status code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Operation;

/// What one operation received and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationStats {
    /// Requests routed to the operation (whatever became of them).
    pub received: u64,
    /// Answers sent, by HTTP status (a reset connection sends none).
    pub answered: BTreeMap<u16, u64>,
}

/// Every operation's counts since the emulator started or the counts were reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `CreateUser`.
    pub create_user: OperationStats,
    /// `ListUsers`.
    pub list_users: OperationStats,
}

impl Stats {
    fn of(&mut self, operation: Operation) -> &mut OperationStats {
        match operation {
            Operation::CreateUser => &mut self.create_user,
            Operation::ListUsers => &mut self.list_users,
        }
    }

    pub(crate) fn received(&mut self, operation: Operation) {
        self.of(operation).received += 1;
    }

    pub(crate) fn answered(&mut self, operation: Operation, status: u16) {
        *self.of(operation).answered.entry(status).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_status_and_reads_back_from_json() {
        let mut stats = Stats::default();
        stats.received(Operation::CreateUser);
        stats.received(Operation::CreateUser);
        stats.answered(Operation::CreateUser, 201);
        stats.received(Operation::ListUsers);
        stats.answered(Operation::ListUsers, 429);
        assert_eq!(stats.create_user.received, 2);
        assert_eq!(stats.create_user.answered, BTreeMap::from([(201, 1)]));
        assert_eq!(stats.list_users.answered, BTreeMap::from([(429, 1)]));
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(serde_json::from_str::<Stats>(&json).unwrap(), stats);
    }
}
