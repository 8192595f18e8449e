//! Rooms: named sets of connections that hear each other's messages.
//!
//! A plain registry (names to members). The loop decides what to send; this only says to whom.

use std::collections::BTreeMap;

/// A room name: 1–64 of `[A-Za-z0-9._-]`, so that it is safe in a path, a log line and JSON.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Every room with at least one member. A room exists while someone is in it.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: BTreeMap<String, Vec<usize>>,
}

impl Rooms {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a member (a client key); returns the room's size after joining.
    pub fn join(&mut self, name: &str, member: usize) -> usize {
        let members = self.rooms.entry(name.to_string()).or_default();
        members.push(member);
        members.len()
    }

    /// Removes a member; returns the room's size after leaving (0: the room is gone).
    pub fn leave(&mut self, name: &str, member: usize) -> usize {
        let Some(members) = self.rooms.get_mut(name) else {
            return 0;
        };
        if let Some(i) = members.iter().position(|&m| m == member) {
            members.swap_remove(i);
        }
        let left = members.len();
        if left == 0 {
            self.rooms.remove(name);
        }
        left
    }

    /// The members of a room (empty when it does not exist).
    pub fn members(&self, name: &str) -> &[usize] {
        self.rooms.get(name).map_or(&[], Vec::as_slice)
    }

    /// Rooms and their sizes, by name.
    pub fn sizes(&self) -> impl Iterator<Item = (&str, usize)> {
        self.rooms.iter().map(|(n, m)| (n.as_str(), m.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("news"));
        assert!(valid_name("a.b_c-D9"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ünï"));
        assert!(!valid_name("a\"b"));
    }

    #[test]
    fn join_and_leave() {
        let mut r = Rooms::new();
        assert_eq!(r.join("a", 1), 1);
        assert_eq!(r.join("a", 2), 2);
        assert_eq!(r.join("b", 3), 1);
        assert_eq!(r.members("a"), &[1, 2]);
        assert_eq!(r.leave("a", 1), 1);
        assert_eq!(r.members("a"), &[2]);
        assert_eq!(r.leave("a", 2), 0);
        assert!(r.members("a").is_empty());
        assert_eq!(r.sizes().collect::<Vec<_>>(), vec![("b", 1)]);
        assert_eq!(r.leave("nowhere", 9), 0);
    }
}
