//! The reply cache: what makes a retransmitted request get the reply already sent instead
//! of a second run.
//!
//! Keyed by (session id, request id). An entry is created, `Running`, when a request is
//! first seen, so that a duplicate arriving while the handler runs is recognised; it
//! becomes `Done` with the encoded answer when the handler finishes, and lives for
//! `lifetime` from then. It holds a digest of the request's payload, so that an id reused
//! with a different payload is refused rather than answered with another request's reply.
//!
//! Bounded twice: by entries (`udp_cache_entries`) and by the bytes of cached answers
//! (`udp_cache_bytes`). Over the byte bound, the oldest answers are dropped but their
//! entries kept as `Evicted` tombstones of a few bytes, so a late retransmission learns its
//! reply is lost (ERROR 16) and still does not run twice. At the entry bound, a new
//! request is refused (`Seen::Full`, answered ERROR 14, not run) rather than an entry
//! forgotten: forgetting one would let its retransmission run a second time. Entries leave
//! when their lifetime passes, or at once when the client's acknowledgement floor (every
//! id below it is finished at the client, and never run again) passes them, so that the
//! cache holds about what clients still wait for rather than two minutes of traffic.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// A request's identity: the client's session and the request id.
pub(crate) type Key = (u64, u32);

/// What the cache knows about a request just received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Never seen (or forgotten): it is now `Running`; run it.
    New,
    /// Its handler is running: do nothing, the answer goes out when it is ready.
    Running,
    /// Answered: send this again.
    Done(Bytes),
    /// Answered, but the answer was evicted: say so, do not run it.
    Evicted,
    /// The same key with a different payload: refuse it.
    Mismatch,
    /// New, but the cache holds `udp_cache_entries` entries: refuse it, not run.
    Full,
}

#[derive(Debug)]
enum State {
    Running,
    Done(Bytes),
    Evicted,
}

#[derive(Debug)]
struct Entry {
    digest: u64,
    state: State,
}

/// The cache of one server.
#[derive(Debug)]
pub(crate) struct ReplyCache {
    entries: HashMap<Key, Entry>,
    /// The ids of each session that have an entry, so that the client's acknowledgement
    /// floor can drop them in order ([`ReplyCache::acknowledge`]).
    by_session: HashMap<u64, BTreeSet<u32>>,
    /// Finished entries (Done or Evicted), oldest first, with when they expire.
    finished: VecDeque<(Instant, Key)>,
    /// Keys that were `Done` when pushed, oldest first: where the byte bound evicts from.
    /// A key whose entry has changed since is skipped.
    answers: VecDeque<Key>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    lifetime: Duration,
}

impl ReplyCache {
    pub(crate) fn new(max_entries: usize, max_bytes: usize, lifetime: Duration) -> ReplyCache {
        ReplyCache {
            entries: HashMap::new(),
            by_session: HashMap::new(),
            finished: VecDeque::new(),
            answers: VecDeque::new(),
            bytes: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            lifetime,
        }
    }

    /// Looks a request up; a new one is entered as running.
    pub(crate) fn seen(&mut self, key: Key, digest: u64) -> Seen {
        match self.entries.get(&key) {
            None if self.entries.len() >= self.max_entries => Seen::Full,
            None => {
                let state = State::Running;
                self.entries.insert(key, Entry { digest, state });
                self.by_session.entry(key.0).or_default().insert(key.1);
                Seen::New
            }
            Some(entry) if entry.digest != digest => Seen::Mismatch,
            Some(Entry { state, .. }) => match state {
                State::Running => Seen::Running,
                State::Done(answer) => Seen::Done(answer.clone()),
                State::Evicted => Seen::Evicted,
            },
        }
    }

    /// Forgets a running request that will not be answered (refused before running).
    pub(crate) fn forget(&mut self, key: Key) {
        if matches!(
            self.entries.get(&key),
            Some(Entry {
                state: State::Running,
                ..
            })
        ) {
            self.drop_entry(key);
        }
    }

    /// The client of `session` says every id below `floor` is finished: their entries go
    /// now rather than at the end of their lifetime (the endpoint never runs such an id
    /// again), so the cache holds about what clients still wait for.
    pub(crate) fn acknowledge(&mut self, session: u64, floor: u32) {
        let Some(ids) = self.by_session.get_mut(&session) else {
            return;
        };
        let keep = ids.split_off(&floor);
        let gone = std::mem::replace(ids, keep);
        for id in gone {
            self.drop_entry((session, id));
        }
        self.compact();
    }

    /// Removes an entry of any state, keeping the byte count and the session index.
    fn drop_entry(&mut self, key: Key) {
        if let Some(entry) = self.entries.remove(&key) {
            if let State::Done(answer) = entry.state {
                self.bytes -= answer.len();
            }
        }
        if let Some(ids) = self.by_session.get_mut(&key.0) {
            ids.remove(&key.1);
            if ids.is_empty() {
                self.by_session.remove(&key.0);
            }
        }
    }

    /// Drops from the two queues the keys whose entries are gone, once they hold more
    /// than twice the entries: acknowledged entries leave the map at once but their
    /// queue places only when reached, and the queues must stay as long as the map.
    fn compact(&mut self) {
        if self.finished.len() <= 2 * self.entries.len() + 64 {
            return;
        }
        let entries = &self.entries;
        self.finished.retain(|(_, key)| entries.contains_key(key));
        self.answers.retain(|key| {
            matches!(
                entries.get(key),
                Some(Entry {
                    state: State::Done(_),
                    ..
                })
            )
        });
    }

    /// Stores a finished request's answer. Returns how many answers were evicted to stay
    /// within the bounds.
    pub(crate) fn finish(&mut self, key: Key, answer: Bytes, now: Instant) -> u64 {
        let Some(entry) = self.entries.get_mut(&key) else {
            return 0;
        };
        self.bytes += answer.len();
        entry.state = State::Done(answer);
        self.finished.push_back((now + self.lifetime, key));
        self.answers.push_back(key);
        self.enforce_bounds()
    }

    /// Drops the entries whose lifetime has passed.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(expires, key)) = self.finished.front() {
            if expires > now {
                break;
            }
            self.finished.pop_front();
            self.remove(key);
        }
        self.trim_answers();
    }

    /// When the oldest entry expires, if any.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.finished.front().map(|(at, _)| *at)
    }

    /// Entries held (tombstones and running requests included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of cached answers.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn enforce_bounds(&mut self) -> u64 {
        let mut evicted = 0;
        while self.bytes > self.max_bytes {
            let Some(key) = self.answers.pop_front() else {
                break;
            };
            if let Some(entry) = self.entries.get_mut(&key) {
                if let State::Done(answer) = &entry.state {
                    self.bytes -= answer.len();
                    entry.state = State::Evicted;
                    evicted += 1;
                }
            }
        }
        self.trim_answers();
        evicted
    }

    /// Removes a finished entry whose lifetime passed (a running one stays: a key whose
    /// entry expired and came back is running again).
    fn remove(&mut self, key: Key) {
        match self.entries.get(&key) {
            Some(Entry {
                state: State::Running,
                ..
            })
            | None => {}
            Some(_) => self.drop_entry(key),
        }
    }

    /// Pops the keys at the front of `answers` that no longer hold an answer, so that the
    /// queue stays as long as the answers cached.
    fn trim_answers(&mut self) {
        while let Some(key) = self.answers.front() {
            match self.entries.get(key) {
                Some(Entry {
                    state: State::Done(_),
                    ..
                }) => break,
                _ => {
                    self.answers.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: usize, bytes: usize) -> ReplyCache {
        ReplyCache::new(entries, bytes, Duration::from_secs(60))
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_while_running_is_not_new_and_after_gets_the_answer() {
        let mut cache = cache(10, 1000);
        assert_eq!(cache.seen((1, 1), 7), Seen::New);
        assert_eq!(cache.seen((1, 1), 7), Seen::Running);
        cache.finish((1, 1), Bytes::from_static(b"ok"), Instant::now());
        assert_eq!(cache.seen((1, 1), 7), Seen::Done(Bytes::from_static(b"ok")));
        // Another session's request of the same id is another request.
        assert_eq!(cache.seen((2, 1), 7), Seen::New);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_id_with_another_payload_is_a_mismatch_running_or_done() {
        let mut cache = cache(10, 1000);
        cache.seen((1, 1), 7);
        assert_eq!(cache.seen((1, 1), 8), Seen::Mismatch);
        cache.finish((1, 1), Bytes::from_static(b"ok"), Instant::now());
        assert_eq!(cache.seen((1, 1), 8), Seen::Mismatch);
        assert_eq!(cache.seen((1, 1), 7), Seen::Done(Bytes::from_static(b"ok")));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_live_for_the_lifetime_and_no_longer() {
        let mut cache = cache(10, 1000);
        cache.seen((1, 1), 0);
        cache.finish((1, 1), Bytes::from_static(b"ok"), Instant::now());
        tokio::time::advance(Duration::from_secs(59)).await;
        cache.expire(Instant::now());
        assert!(matches!(cache.seen((1, 1), 0), Seen::Done(_)));
        assert_eq!(
            cache.next_expiry(),
            Some(Instant::now() + Duration::from_secs(1))
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.expire(Instant::now());
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        assert_eq!(cache.seen((1, 1), 0), Seen::New);
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_bound_evicts_the_oldest_answers_to_tombstones() {
        let mut cache = cache(100, 10);
        for id in 1..=3 {
            cache.seen((1, id), 0);
        }
        let now = Instant::now();
        assert_eq!(cache.finish((1, 1), Bytes::from(vec![0; 4]), now), 0);
        assert_eq!(cache.finish((1, 2), Bytes::from(vec![0; 4]), now), 0);
        assert_eq!(cache.finish((1, 3), Bytes::from(vec![0; 4]), now), 1);
        assert_eq!(cache.bytes(), 8);
        // The evicted one is not run again: it is a tombstone, not forgotten.
        assert_eq!(cache.seen((1, 1), 0), Seen::Evicted);
        assert!(matches!(cache.seen((1, 2), 0), Seen::Done(_)));
        assert!(matches!(cache.seen((1, 3), 0), Seen::Done(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_entry_bound_new_requests_are_refused_and_nothing_is_forgotten() {
        let mut cache = cache(2, 1000);
        assert_eq!(cache.seen((1, 1), 0), Seen::New);
        assert_eq!(cache.seen((1, 2), 0), Seen::New);
        assert_eq!(cache.seen((1, 3), 0), Seen::Full);
        cache.finish((1, 2), Bytes::from_static(b"b"), Instant::now());
        assert_eq!(cache.seen((1, 3), 0), Seen::Full);
        assert_eq!(cache.seen((1, 1), 0), Seen::Running);
        assert!(matches!(cache.seen((1, 2), 0), Seen::Done(_)));
        tokio::time::advance(Duration::from_secs(60)).await;
        cache.expire(Instant::now());
        assert_eq!(
            cache.seen((1, 3), 0),
            Seen::New,
            "room once an entry expired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_queue_does_not_grow_past_the_answers_held() {
        let mut cache = cache(1000, 1 << 20);
        for id in 1..=500 {
            cache.seen((1, id), 0);
            cache.finish((1, id), Bytes::from_static(b"x"), Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
            cache.expire(Instant::now());
        }
        // Finished at seconds 0 to 499, each kept 60 s: those after second 440 remain.
        assert_eq!(cache.len(), 59);
        assert_eq!(cache.answers.len(), 59);
        assert_eq!(cache.finished.len(), 59);
    }

    #[tokio::test(start_paused = true)]
    async fn the_acknowledgement_floor_drops_a_sessions_older_entries_at_once() {
        let mut cache = cache(4, 1000);
        for id in 1..=3 {
            cache.seen((1, id), 0);
            cache.finish((1, id), Bytes::from_static(b"ok"), Instant::now());
        }
        cache.seen((2, 1), 0);
        assert_eq!(cache.seen((1, 4), 0), Seen::Full);
        cache.acknowledge(1, 3);
        assert_eq!((cache.len(), cache.bytes()), (2, 2));
        assert_eq!(cache.seen((1, 4), 0), Seen::New, "room made by the floor");
        assert!(
            matches!(cache.seen((1, 3), 0), Seen::Done(_)),
            "the floor itself stays"
        );
        assert_eq!(
            cache.seen((2, 1), 0),
            Seen::Running,
            "another session is untouched"
        );
        // Their queue places go once they outnumber the entries.
        let mut big = ReplyCache::new(10_000, 1 << 20, Duration::from_secs(60));
        for id in 1..=1000 {
            big.seen((1, id), 0);
            big.finish((1, id), Bytes::from_static(b"x"), Instant::now());
            big.acknowledge(1, id);
        }
        assert_eq!(big.len(), 1);
        assert!(
            big.finished.len() <= 2 * big.len() + 65,
            "{}",
            big.finished.len()
        );
        assert!(big.answers.len() <= big.finished.len());
    }

    #[tokio::test(start_paused = true)]
    async fn forget_removes_only_running_entries() {
        let mut cache = cache(10, 1000);
        cache.seen((1, 1), 0);
        cache.forget((1, 1));
        assert_eq!(cache.seen((1, 1), 0), Seen::New);
        cache.finish((1, 1), Bytes::from_static(b"ok"), Instant::now());
        cache.forget((1, 1));
        assert!(matches!(cache.seen((1, 1), 0), Seen::Done(_)));
    }
}
