//! The broadcast delay of a match: log records held back until they are due, released in log
//! order. Pure; the hub decides what "now" is and when to look again.

use std::collections::VecDeque;

/// Records waiting for their release time (µs since the Unix epoch). Bounded: the hub stops
/// reading the log while the line is full, so a long delay costs at most `capacity` records.
pub(crate) struct DelayLine<T> {
    items: VecDeque<(u64, T)>,
    capacity: usize,
}

impl<T> DelayLine<T> {
    pub fn new(capacity: usize) -> DelayLine<T> {
        DelayLine {
            items: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Queues `item` for `due_us`. Release times never go backwards: a record due earlier than
    /// the one before it (a resubscription's keyframe, clock skew between publishers) waits for
    /// it, so viewers always get the log's order.
    pub fn push(&mut self, due_us: u64, item: T) {
        let due = self
            .items
            .back()
            .map_or(due_us, |(last, _)| due_us.max(*last));
        self.items.push_back((due, item));
    }

    /// When the oldest record is due.
    pub fn next_due(&self) -> Option<u64> {
        self.items.front().map(|(due, _)| *due)
    }

    /// The oldest record, if it is due at `now_us`.
    pub fn pop_due(&mut self, now_us: u64) -> Option<T> {
        if self.next_due()? <= now_us {
            self.items.pop_front().map(|(_, item)| item)
        } else {
            None
        }
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_once_due() {
        let mut line = DelayLine::new(8);
        line.push(100, "a");
        line.push(150, "b");
        assert_eq!(line.next_due(), Some(100));
        assert_eq!(line.pop_due(99), None);
        assert_eq!(line.pop_due(100), Some("a"));
        assert_eq!(line.pop_due(149), None);
        assert_eq!(line.pop_due(1_000), Some("b"));
        assert_eq!(line.pop_due(1_000), None);
        assert!(line.is_empty());
    }

    #[test]
    fn an_earlier_due_time_waits_for_the_record_before_it() {
        let mut line = DelayLine::new(8);
        line.push(200, 1);
        line.push(120, 2);
        assert_eq!(line.pop_due(150), None);
        assert_eq!(line.pop_due(200), Some(1));
        assert_eq!(line.pop_due(200), Some(2));
    }

    #[test]
    fn reports_full_at_capacity() {
        let mut line = DelayLine::new(2);
        line.push(1, ());
        assert!(!line.is_full());
        line.push(2, ());
        assert!(line.is_full());
        line.pop_due(5);
        assert!(!line.is_full());
        line.clear();
        assert!(line.is_empty());
    }
}
