//! Our [`Position`] to and from the `eventstore` client's and the wire's.
//!
//! `From` between [`Position`] and [`eventstore::Position`] cannot be written
//! anywhere: both types are foreign to this crate (the orphan rule), and
//! `replicator-core` depends on no adapter. An extension trait on our type
//! reads as well at the call sites (`Position::from_client(p)`,
//! `p.to_client()`) without a wrapper to unwrap. The wire's own message
//! ([`AllPosition`]) is this crate's, so it gets plain `From`.

use eventstore::ResolvedEvent;
use replicator_core::Position;

use crate::wire::proto::AllPosition;

/// Conversions of [`Position`] to and from the `eventstore` client's types.
pub trait ClientPosition {
    /// The client's position as ours.
    fn from_client(position: eventstore::Position) -> Self;

    /// The position of the record `event` was read as: the link when the
    /// read resolved one, else the event.
    ///
    /// # Panics
    /// When `event` holds neither (the client never returns such).
    fn of(event: &ResolvedEvent) -> Self;

    /// Ours as the client's.
    fn to_client(self) -> eventstore::Position;
}

impl ClientPosition for Position {
    fn from_client(position: eventstore::Position) -> Self {
        Position {
            commit: position.commit,
            prepare: position.prepare,
        }
    }

    fn of(event: &ResolvedEvent) -> Self {
        Self::from_client(event.get_original_event().position)
    }

    fn to_client(self) -> eventstore::Position {
        eventstore::Position {
            commit: self.commit,
            prepare: self.prepare,
        }
    }
}

impl From<AllPosition> for Position {
    fn from(position: AllPosition) -> Self {
        Position {
            commit: position.commit_position,
            prepare: position.prepare_position,
        }
    }
}

impl From<Position> for AllPosition {
    fn from(position: Position) -> Self {
        AllPosition {
            commit_position: position.commit,
            prepare_position: position.prepare,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_the_round_trips() {
        let ours = Position {
            commit: 20,
            prepare: 10,
        };
        assert_eq!(Position::from_client(ours.to_client()), ours);
        assert_eq!(Position::from(AllPosition::from(ours)), ours);
        let theirs = ours.to_client();
        assert_eq!((theirs.commit, theirs.prepare), (20, 10));
    }
}
