//! The arena simulation shared by the authoritative game server and client-side prediction:
//! world and rules (`world`), movement (`physics`), lag compensation (`rewind`) and area of
//! interest (`aoi`). Deterministic and free of I/O.

pub mod aoi;
pub mod physics;
pub mod rewind;
pub mod world;

pub use physics::{Body, ARENA};
pub use world::{Player, ShotOutcome, SimEvent, Tally, World, WorldConfig};
