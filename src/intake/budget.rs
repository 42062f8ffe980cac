//! The memory budget (DESIGN.md invariant 5): message bytes held by all sessions and
//! injections together, from the first byte read until the spool's commit answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One budget for message bytes buffered by all sessions (DESIGN.md invariant 5). Past it, the
/// session that asks for more has its message refused with 452 4.3.1.
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        crate::metrics::MEMORY_BUDGET.set(limit as i64);
        Arc::new(MemoryBudget { used: AtomicUsize::new(0), limit })
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one connection has charged to the budget; returned when it ends.
pub struct Charge {
    budget: Arc<MemoryBudget>,
    charged: usize,
}

impl Charge {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Charge { budget, charged: 0 }
    }

    /// Sets this connection's charge to `held`; true when the budget is now exceeded.
    pub fn set(&mut self, held: usize) -> bool {
        let used = if held >= self.charged {
            self.budget.used.fetch_add(held - self.charged, Ordering::Relaxed)
                + (held - self.charged)
        } else {
            self.budget.used.fetch_sub(self.charged - held, Ordering::Relaxed)
                - (self.charged - held)
        };
        self.charged = held;
        crate::metrics::MEMORY_BUDGET_USED.set(used as i64);
        used > self.budget.limit
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let left = self.budget.used.fetch_sub(self.charged, Ordering::Relaxed) - self.charged;
        crate::metrics::MEMORY_BUDGET_USED.set(left as i64);
    }
}
