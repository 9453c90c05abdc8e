//! Lag compensation: the room keeps where every player was at each recent tick, so a shot is
//! judged against the world as the shooter saw it, not as it is now on the server.
//!
//! Fairness trade-off: favouring the shooter (what you hit on your screen counts) means a
//! victim can be hit "behind a wall" they already reached, up to the rewind window late. The
//! cap (200 ms by default) bounds that: players with worse latency must lead their shots, and
//! nobody is hit more than 200 ms after reaching cover. A body that died or respawned since
//! the shooter's view is not hit at its old spot (each life has its own number).

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    pub entity: u16,
    pub x: f32,
    pub y: f32,
    pub alive: bool,
    pub life: u32,
}

/// Poses per tick for the last `capacity` ticks (about one second).
#[derive(Debug, Clone)]
pub struct History {
    frames: VecDeque<(u64, Vec<Pose>)>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            frames: VecDeque::with_capacity(capacity + 1),
            capacity: capacity.max(2),
        }
    }

    /// Records the poses after `tick` (ticks must be recorded in order).
    pub fn record(&mut self, tick: u64, poses: Vec<Pose>) {
        if self.frames.len() >= self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back((tick, poses));
    }

    fn frame(&self, tick: u64) -> Option<&[Pose]> {
        let first = self.frames.front()?.0;
        let i = usize::try_from(tick.checked_sub(first)?).ok()?;
        self.frames
            .get(i)
            .filter(|f| f.0 == tick)
            .map(|f| f.1.as_slice())
    }

    pub fn oldest_tick(&self) -> Option<u64> {
        self.frames.front().map(|f| f.0)
    }

    /// Where `entity` was at `tick` + `frac`/256, interpolated between the two recorded ticks
    /// unless it died or respawned between them (then the earlier pose, never a blend).
    pub fn pose_at(&self, entity: u16, tick: u64, frac: u8) -> Option<Pose> {
        let find = |f: &[Pose]| f.iter().find(|p| p.entity == entity).copied();
        let a = find(self.frame(tick)?)?;
        if frac == 0 {
            return Some(a);
        }
        match self.frame(tick + 1).and_then(find) {
            Some(b) if b.life == a.life && b.alive && a.alive => {
                let t = f32::from(frac) / 256.0;
                Some(Pose {
                    x: a.x + (b.x - a.x) * t,
                    y: a.y + (b.y - a.y) * t,
                    ..a
                })
            }
            _ => Some(a),
        }
    }
}
