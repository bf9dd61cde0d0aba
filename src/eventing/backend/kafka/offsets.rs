//! Which offsets of each partition may be committed.
//!
//! Records are handed out in offset order per partition but finish in any
//! order (unordered triggers deliver concurrently). Kafka keeps one committed
//! offset per partition: "everything before this is done". So the commit
//! position is the lowest offset still in flight, or one past the highest
//! offset seen when nothing is in flight. A crash then redelivers what was in
//! flight and never skips anything.
//!
//! A partition revoked by a rebalance is forgotten; acknowledgements that
//! arrive for it afterwards carry an older generation and are ignored, so a
//! finished delivery can never move a commit the new owner relies on.

use std::collections::{BTreeMap, BTreeSet};

/// A topic's partition.
pub(crate) type TopicPartition = (String, i32);

/// Identifies one handed-out record, for its acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetToken {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

#[derive(Debug)]
struct Partition {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset seen; `None` before the first record.
    next: Option<i64>,
    /// What was last committed, to commit only changes.
    committed: Option<i64>,
}

impl Partition {
    fn position(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next)
    }

    fn seen(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }
}

/// Per-partition commit positions of one consumer.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, Partition>,
    generations: u64,
}

impl OffsetTracker {
    /// The partition is ours (again): start fresh, with a new generation.
    pub(crate) fn assign(&mut self, topic: &str, partition: i32) {
        self.generations += 1;
        self.partitions.insert(
            (topic.to_owned(), partition),
            Partition {
                generation: self.generations,
                in_flight: BTreeSet::new(),
                next: None,
                committed: None,
            },
        );
    }

    /// The partition is no longer ours: later acks for it are ignored.
    pub(crate) fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Partition> {
        self.partitions.get_mut(&(topic.to_owned(), partition))
    }

    /// A record handed out for delivery; its ack must bring back the token.
    /// `None` when the partition is not assigned (a record fetched just
    /// before a revoke): it must not be delivered, its new owner will.
    pub(crate) fn start(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<OffsetToken> {
        let p = self.get_mut(topic, partition)?;
        p.in_flight.insert(offset);
        p.seen(offset);
        Some(OffsetToken {
            topic: topic.to_owned(),
            partition,
            offset,
            generation: p.generation,
        })
    }

    /// A record that needs no delivery (filtered out, undecodable): done at once.
    pub(crate) fn skip(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.get_mut(topic, partition) {
            p.seen(offset);
        }
    }

    /// A delivery finished. Acks of a revoked (or re-assigned) partition are
    /// ignored.
    pub(crate) fn done(&mut self, token: &OffsetToken) {
        if let Some(p) = self.get_mut(&token.topic, token.partition)
            && p.generation == token.generation
        {
            p.in_flight.remove(&token.offset);
        }
    }

    /// The commit position of a partition: everything before it is done.
    pub(crate) fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .get(&(topic.to_owned(), partition))?
            .position()
    }

    /// Positions that moved since the last call, to commit now. They are
    /// recorded as committed; after a failed commit, hand them to
    /// [`OffsetTracker::commit_failed`] so the next call offers them again.
    pub(crate) fn take_commits(&mut self) -> Vec<(String, i32, i64)> {
        let mut commits = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            if let Some(position) = p.position()
                && p.committed != Some(position)
            {
                p.committed = Some(position);
                commits.push((topic.clone(), *partition, position));
            }
        }
        commits
    }

    /// The commit of these positions failed: offer them again next time.
    pub(crate) fn commit_failed(&mut self, commits: &[(String, i32, i64)]) {
        for (topic, partition, _) in commits {
            if let Some(p) = self.get_mut(topic, *partition) {
                p.committed = None;
            }
        }
    }

    /// The commit positions of the given partitions (for the commit on revoke).
    pub(crate) fn positions_of_topic(
        &self,
        partitions: &[TopicPartition],
    ) -> Vec<(String, i32, i64)> {
        partitions
            .iter()
            .filter_map(|(t, p)| Some((t.clone(), *p, self.position(t, *p)?)))
            .collect()
    }

    /// Every assigned partition with its position (for the backlog).
    pub(crate) fn all_positions(&self) -> Vec<(String, i32, Option<i64>)> {
        self.partitions
            .iter()
            .map(|((t, p), part)| (t.clone(), *p, part.position()))
            .collect()
    }

    /// Deliveries handed out and not yet acknowledged.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "topic";

    fn tracker(partitions: &[i32]) -> OffsetTracker {
        let mut t = OffsetTracker::default();
        for &p in partitions {
            t.assign(T, p);
        }
        t
    }

    #[test]
    fn nothing_seen_means_nothing_to_commit() {
        let mut t = tracker(&[0]);
        assert_eq!(t.position(T, 0), None);
        assert!(t.take_commits().is_empty());
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let mut t = tracker(&[0]);
        let tokens: Vec<_> = (10..15).map(|o| t.start(T, 0, o).unwrap()).collect();
        assert_eq!(t.position(T, 0), Some(10));
        t.done(&tokens[1]);
        t.done(&tokens[3]);
        assert_eq!(t.position(T, 0), Some(10), "10 is still in flight");
        t.done(&tokens[0]);
        assert_eq!(t.position(T, 0), Some(12), "10 and 11 done, 12 in flight");
        t.done(&tokens[2]);
        assert_eq!(t.position(T, 0), Some(14));
        t.done(&tokens[4]);
        assert_eq!(t.position(T, 0), Some(15), "all done: one past the last");
    }

    #[test]
    fn skipped_records_advance_only_when_nothing_before_them_is_in_flight() {
        let mut t = tracker(&[0]);
        let first = t.start(T, 0, 0).unwrap();
        t.skip(T, 0, 1);
        t.skip(T, 0, 2);
        assert_eq!(t.position(T, 0), Some(0));
        t.done(&first);
        assert_eq!(t.position(T, 0), Some(3));
    }

    #[test]
    fn partitions_and_topics_are_independent() {
        let mut t = tracker(&[0, 1]);
        t.assign("other", 0);
        let a = t.start(T, 0, 5).unwrap();
        let b = t.start(T, 1, 7).unwrap();
        let c = t.start("other", 0, 2).unwrap();
        t.done(&b);
        assert_eq!(t.position(T, 0), Some(5));
        assert_eq!(t.position(T, 1), Some(8));
        assert_eq!(t.position("other", 0), Some(2));
        t.done(&a);
        t.done(&c);
        assert_eq!(
            t.take_commits(),
            vec![("other".into(), 0, 3), (T.into(), 0, 6), (T.into(), 1, 8)]
        );
    }

    #[test]
    fn commits_are_offered_once_per_change_and_again_after_a_failure() {
        let mut t = tracker(&[0]);
        let a = t.start(T, 0, 0).unwrap();
        t.done(&a);
        assert_eq!(t.take_commits(), vec![(T.into(), 0, 1)]);
        assert!(t.take_commits().is_empty(), "unchanged: nothing to commit");
        t.commit_failed(&[(T.into(), 0, 1)]);
        assert_eq!(t.take_commits(), vec![(T.into(), 0, 1)]);
    }

    #[test]
    fn acks_after_a_revoke_are_ignored_even_when_the_partition_comes_back() {
        let mut t = tracker(&[0]);
        let old = t.start(T, 0, 3).unwrap();
        t.revoke(T, 0);
        assert_eq!(t.position(T, 0), None);
        assert!(
            t.start(T, 0, 4).is_none(),
            "a revoked partition hands out nothing"
        );
        t.assign(T, 0);
        let new = t.start(T, 0, 3).unwrap();
        t.done(&old);
        assert_eq!(
            t.position(T, 0),
            Some(3),
            "the old generation's ack changed nothing"
        );
        t.done(&new);
        assert_eq!(t.position(T, 0), Some(4));
    }

    #[test]
    fn positions_of_revoked_partitions_for_the_commit_on_revoke() {
        let mut t = tracker(&[0, 1, 2]);
        let a = t.start(T, 0, 9).unwrap();
        t.skip(T, 1, 4);
        t.done(&a);
        let revoked: Vec<TopicPartition> = (0..3).map(|p| (T.to_owned(), p)).collect();
        assert_eq!(
            t.positions_of_topic(&revoked),
            vec![(T.into(), 0, 10), (T.into(), 1, 5)]
        );
        assert_eq!(t.in_flight(), 0);
    }
}
