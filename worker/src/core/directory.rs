//! Which sessions this worker runs, and the capacity check that admits new
//! ones. A slot is reserved before the registry claim so that two creates
//! racing on one worker cannot both pass the capacity check.

use std::collections::HashMap;

use bus_schema::SessionId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Full,
    Draining,
    /// Already running (or starting) here.
    Present,
}

#[derive(Debug)]
enum Slot<H> {
    Reserved,
    Running { epoch: u64, handle: H },
}

/// `H` is whatever the driver uses to talk to a running session.
#[derive(Debug)]
pub struct Directory<H> {
    capacity: u32,
    draining: bool,
    slots: HashMap<SessionId, Slot<H>>,
}

impl<H: Clone> Directory<H> {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            draining: false,
            slots: HashMap::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn used(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn reserve(&mut self, id: &SessionId) -> Result<(), Refusal> {
        if self.slots.contains_key(id) {
            return Err(Refusal::Present);
        }
        if self.draining {
            return Err(Refusal::Draining);
        }
        if self.used() >= self.capacity {
            return Err(Refusal::Full);
        }
        self.slots.insert(id.clone(), Slot::Reserved);
        Ok(())
    }

    /// Gives back a reservation that did not become a session.
    pub fn release(&mut self, id: &SessionId) {
        if matches!(self.slots.get(id), Some(Slot::Reserved)) {
            self.slots.remove(id);
        }
    }

    pub fn fill(&mut self, id: &SessionId, epoch: u64, handle: H) {
        self.slots
            .insert(id.clone(), Slot::Running { epoch, handle });
    }

    /// Removes a running session, only if it is still the given epoch (a
    /// newer run of the same id must not be removed by an older one).
    pub fn remove(&mut self, id: &SessionId, epoch: u64) {
        if matches!(self.slots.get(id), Some(Slot::Running { epoch: e, .. }) if *e == epoch) {
            self.slots.remove(id);
        }
    }

    pub fn get(&self, id: &SessionId) -> Option<(u64, H)> {
        match self.slots.get(id) {
            Some(Slot::Running { epoch, handle }) => Some((*epoch, handle.clone())),
            _ => None,
        }
    }

    pub fn is_reserved(&self, id: &SessionId) -> bool {
        matches!(self.slots.get(id), Some(Slot::Reserved))
    }

    /// Running sessions: id, epoch, handle.
    pub fn running(&self) -> Vec<(SessionId, u64, H)> {
        let mut v: Vec<_> = self
            .slots
            .iter()
            .filter_map(|(id, s)| match s {
                Slot::Running { epoch, handle } => Some((id.clone(), *epoch, handle.clone())),
                Slot::Reserved => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn reservations_count_against_capacity() {
        let mut d: Directory<()> = Directory::new(2);
        d.reserve(&id("a")).unwrap();
        d.reserve(&id("b")).unwrap();
        assert_eq!(d.reserve(&id("c")), Err(Refusal::Full));
        d.release(&id("a"));
        d.reserve(&id("c")).unwrap();
    }

    #[test]
    fn the_same_id_cannot_be_reserved_twice() {
        let mut d: Directory<()> = Directory::new(5);
        d.reserve(&id("a")).unwrap();
        assert_eq!(d.reserve(&id("a")), Err(Refusal::Present));
        d.fill(&id("a"), 1, ());
        assert_eq!(d.reserve(&id("a")), Err(Refusal::Present));
    }

    #[test]
    fn remove_only_takes_the_named_epoch() {
        let mut d: Directory<u8> = Directory::new(5);
        d.reserve(&id("a")).unwrap();
        d.fill(&id("a"), 2, 7);
        d.remove(&id("a"), 1);
        assert_eq!(d.get(&id("a")), Some((2, 7)));
        d.release(&id("a"));
        assert_eq!(
            d.get(&id("a")),
            Some((2, 7)),
            "release leaves running sessions alone"
        );
        d.remove(&id("a"), 2);
        assert_eq!(d.used(), 0);
    }

    #[test]
    fn draining_refuses_new_sessions() {
        let mut d: Directory<()> = Directory::new(5);
        d.start_draining();
        assert_eq!(d.reserve(&id("a")), Err(Refusal::Draining));
    }
}
