//! One page of `session.list`, cut from the registry's records.
//!
//! The order is creation time, then id ([`ListCursor`]'s order), so a
//! cursor names a place that stays put while sessions come and go: a page
//! starts strictly after it, and a session created meanwhile shows up on a
//! later page (it sorts last) or, when its creation time is earlier than the
//! cursor's, not in this walk. A page stops at the caller's limit or at
//! `budget`, the bytes its sessions may take in the reply, whichever comes
//! first, and always holds at least one session when any is left, so a walk
//! always ends.

use bus_schema::{encode, ListCursor, ListSessions, SessionInfo, SessionList, SessionState};

/// The page `q` asks for out of `all` (any order), with at most `budget`
/// bytes of encoded sessions.
pub fn page(mut all: Vec<SessionInfo>, q: &ListSessions, budget: usize) -> SessionList {
    all.retain(|s| q.include_ended || s.record.state != SessionState::Ended);
    all.sort_by_cached_key(|s| ListCursor::of(&s.record));
    let start = match &q.after {
        Some(after) => all.partition_point(|s| ListCursor::of(&s.record) <= *after),
        None => 0,
    };
    let limit = q.limit.map_or(usize::MAX, |n| n as usize);
    let mut sessions = Vec::new();
    let mut used = 0;
    let mut rest = all.into_iter().skip(start).peekable();
    while sessions.len() < limit {
        let Some(next) = rest.peek() else { break };
        // Each session after the first costs a comma too.
        let size = encode(next).len() + 1;
        if !sessions.is_empty() && used + size > budget {
            break;
        }
        used += size;
        sessions.extend(rest.next());
    }
    let next = match rest.peek() {
        Some(_) => sessions.last().map(|s| ListCursor::of(&s.record)),
        None => None,
    };
    SessionList { sessions, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_schema::{
        EndReason, Ended, HumanDuration, SessionId, SessionRecord, SessionSpec, SourceSpec,
        Timestamp, WorkerId,
    };
    use std::time::{Duration, SystemTime};

    fn info(id: &str, created_s: u64, ended: bool) -> SessionInfo {
        let at = Timestamp::from_system(SystemTime::UNIX_EPOCH + Duration::from_secs(created_s));
        SessionInfo {
            record: SessionRecord {
                id: SessionId::parse(id).unwrap(),
                owner: WorkerId::parse("w-1").unwrap(),
                epoch: 1,
                state: if ended {
                    SessionState::Ended
                } else {
                    SessionState::Live
                },
                spec: SessionSpec {
                    source: SourceSpec::default(),
                    idle_ttl: HumanDuration::parse("5m").unwrap(),
                    max_lifetime: HumanDuration::parse("1h").unwrap(),
                    on_worker_lost: Default::default(),
                    labels: Default::default(),
                },
                created_at: at,
                updated_at: at,
                live_at: None,
                ended: ended.then_some(Ended {
                    reason: EndReason::Stopped,
                    at,
                    detail: None,
                }),
                viewers: 0,
            },
            revision: 1,
        }
    }

    fn ids(l: &SessionList) -> Vec<&str> {
        l.sessions.iter().map(|s| s.record.id.as_str()).collect()
    }

    /// Every page of a walk with `limit`, following `next` to the end.
    fn walk(all: &[SessionInfo], limit: Option<u32>, budget: usize) -> Vec<SessionList> {
        let mut q = ListSessions {
            include_ended: true,
            limit,
            after: None,
        };
        let mut pages = Vec::new();
        loop {
            let p = page(all.to_vec(), &q, budget);
            let next = p.next.clone();
            pages.push(p);
            match next {
                Some(c) => q.after = Some(c),
                None => return pages,
            }
        }
    }

    #[test]
    fn oldest_first_then_by_id_and_ended_only_when_asked() {
        let all = vec![
            info("c", 20, false),
            info("b", 10, false),
            info("a", 20, false),
            info("gone", 5, true),
        ];
        let q = ListSessions::default();
        let p = page(all.clone(), &q, usize::MAX);
        assert_eq!(ids(&p), ["b", "a", "c"]);
        assert_eq!(p.next, None, "one page holds everything");
        let q = ListSessions {
            include_ended: true,
            ..q
        };
        assert_eq!(ids(&page(all, &q, usize::MAX)), ["gone", "b", "a", "c"]);
    }

    #[test]
    fn a_walk_by_limit_visits_every_session_once_in_order() {
        let all: Vec<_> = (0..23)
            .map(|i| info(&format!("s-{i:02}"), 100 - i / 3, i % 5 == 0))
            .collect();
        let mut expected = all.clone();
        expected.sort_by_key(|s| ListCursor::of(&s.record));
        let pages = walk(&all, Some(5), usize::MAX);
        assert_eq!(pages.len(), 5, "23 sessions in pages of 5");
        assert!(pages[..4].iter().all(|p| p.sessions.len() == 5));
        assert!(pages[..4].iter().all(|p| p.next.is_some()));
        assert_eq!(pages[4].next, None);
        let seen: Vec<_> = pages.iter().flat_map(|p| p.sessions.clone()).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_page_stops_at_the_byte_budget_but_never_comes_back_empty() {
        let all: Vec<_> = (0..10).map(|i| info(&format!("s-{i}"), i, false)).collect();
        let one = encode(&all[0]).len() + 1;
        // Room for three sessions, not four.
        let pages = walk(&all, None, 3 * one + one / 2);
        assert_eq!(
            pages.iter().map(|p| p.sessions.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        for p in &pages {
            let bytes: usize = p.sessions.iter().map(|s| encode(s).len() + 1).sum();
            assert!(bytes <= 3 * one + one / 2, "{bytes} bytes in a page");
        }
        // A budget smaller than one session still moves the walk on.
        let pages = walk(&all, None, 1);
        assert_eq!(pages.len(), 10);
        assert!(pages.iter().all(|p| p.sessions.len() == 1));
        // The limit and the budget: whichever is smaller wins.
        let pages = walk(&all, Some(2), 3 * one + one / 2);
        assert_eq!(pages[0].sessions.len(), 2);
    }

    #[test]
    fn a_cursor_outlives_its_session_and_later_sessions_still_come() {
        let mut all: Vec<_> = (0..6).map(|i| info(&format!("s-{i}"), i, false)).collect();
        let q = ListSessions {
            limit: Some(3),
            ..ListSessions::default()
        };
        let first = page(all.clone(), &q, usize::MAX);
        assert_eq!(ids(&first), ["s-0", "s-1", "s-2"]);
        let cursor = first.next.clone().expect("more follow");
        // The cursor's session goes and a new one arrives before the next page.
        all.retain(|s| s.record.id.as_str() != "s-2");
        all.push(info("s-new", 50, false));
        let q = ListSessions {
            after: Some(cursor),
            ..q
        };
        let second = page(all, &q, usize::MAX);
        assert_eq!(ids(&second), ["s-3", "s-4", "s-5"]);
        assert!(second.next.is_some(), "s-new is still to come");
    }

    #[test]
    fn the_last_page_has_no_next_even_when_full() {
        let all: Vec<_> = (0..4).map(|i| info(&format!("s-{i}"), i, false)).collect();
        let pages = walk(&all, Some(2), usize::MAX);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[1].next, None);
        // And past the end: an empty page, no next.
        let q = ListSessions {
            after: Some(ListCursor::of(&all[3].record)),
            ..ListSessions::default()
        };
        let p = page(all, &q, usize::MAX);
        assert!(p.sessions.is_empty());
        assert_eq!(p.next, None);
    }
}
