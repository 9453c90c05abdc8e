//! Area of interest: which entities a player is sent, from a uniform spatial grid.
//!
//! An entity enters a player's view within `radius` and leaves only beyond `radius + margin`
//! (hysteresis, so one at the edge does not flicker in and out). Entities in view are tiered:
//! near ones (within `near`) are refreshed every snapshot, far ones every `far_every`th, their
//! refreshes spread over snapshots by entity id.

use crate::physics::ARENA;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InterestConfig {
    pub radius: f32,
    pub margin: f32,
    pub near: f32,
    pub far_every: u64,
}

impl Default for InterestConfig {
    fn default() -> Self {
        InterestConfig {
            radius: 400.0,
            margin: 50.0,
            near: 200.0,
            far_every: 3,
        }
    }
}

const CELL: f32 = 100.0;
const COLS: usize = (ARENA / CELL) as usize;

/// Entity ids bucketed by cell; rebuilt once per snapshot round, shared by every player.
#[derive(Debug, Clone)]
pub struct Grid {
    cells: Vec<Vec<(u16, f32, f32)>>,
    /// Every entity, ascending by id: a query that spans most of the cells reads this instead
    /// (fewer cells to walk, and its answer needs no sort).
    all: Vec<(u16, f32, f32)>,
}

/// A query spanning at least this many cells scans every entity in id order instead.
const SCAN_ALL_CELLS: usize = COLS * COLS / 2;

fn cell_of(v: f32) -> usize {
    ((v / CELL) as usize).min(COLS - 1)
}

impl Grid {
    pub fn build(entities: impl IntoIterator<Item = (u16, f32, f32)>) -> Grid {
        let mut grid = Grid {
            cells: vec![Vec::new(); COLS * COLS],
            all: Vec::new(),
        };
        grid.rebuild(entities);
        grid
    }

    /// Refills the grid in place, keeping every cell's buffer (no allocation once the cells
    /// have grown to their usual occupancy).
    pub fn rebuild(&mut self, entities: impl IntoIterator<Item = (u16, f32, f32)>) {
        for cell in &mut self.cells {
            cell.clear();
        }
        self.all.clear();
        for (id, x, y) in entities {
            self.cells[cell_of(y) * COLS + cell_of(x)].push((id, x, y));
            self.all.push((id, x, y));
        }
        // Rooms list their players by id already: the sort only checks.
        self.all.sort_by_key(|e| e.0);
    }

    /// Entities within `r` of (x, y), with their squared distance; true when they come
    /// ascending by id (a query spanning most of the arena scans every entity in order).
    pub fn within(&self, x: f32, y: f32, r: f32, out: &mut Vec<(u16, f32)>) -> bool {
        let (c0, c1) = (cell_of((x - r).max(0.0)), cell_of((x + r).min(ARENA)));
        let (r0, r1) = (cell_of((y - r).max(0.0)), cell_of((y + r).min(ARENA)));
        if (c1 - c0 + 1) * (r1 - r0 + 1) >= SCAN_ALL_CELLS {
            for &(id, ex, ey) in &self.all {
                let d2 = (ex - x).powi(2) + (ey - y).powi(2);
                if d2 <= r * r {
                    out.push((id, d2));
                }
            }
            return true;
        }
        for row in r0..=r1 {
            for col in c0..=c1 {
                for &(id, ex, ey) in &self.cells[row * COLS + col] {
                    let d2 = (ex - x).powi(2) + (ey - y).powi(2);
                    if d2 <= r * r {
                        out.push((id, d2));
                    }
                }
            }
        }
        false
    }
}

/// What one player is sent this snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interest {
    /// In view, ascending.
    pub visible: Vec<u16>,
    /// The subset of `visible` whose state is refreshed this snapshot; the others keep the
    /// state the player last acknowledged.
    pub refresh: Vec<u16>,
}

/// The interest of a player at (x, y) (`me` is always in view and always refreshed), given
/// what it saw last snapshot (`previous`, ascending).
pub fn interest(
    grid: &Grid,
    me: u16,
    x: f32,
    y: f32,
    previous: &[u16],
    snapshot_no: u64,
    config: &InterestConfig,
) -> Interest {
    let mut out = Interest::default();
    interest_into(
        grid,
        me,
        (x, y),
        previous,
        snapshot_no,
        config,
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// [`interest`] into `out`, with `around` as scratch: both keep their buffers, so a room
/// computing every player's interest each snapshot does not allocate once they have grown.
#[allow(clippy::too_many_arguments)]
pub fn interest_into(
    grid: &Grid,
    me: u16,
    (x, y): (f32, f32),
    previous: &[u16],
    snapshot_no: u64,
    config: &InterestConfig,
    around: &mut Vec<(u16, f32)>,
    out: &mut Interest,
) {
    around.clear();
    let ascending = grid.within(x, y, config.radius + config.margin, around);
    // In id order (as it comes, or sorted once), every list is built in one pass (`previous`
    // walked alongside): no sort of the results, no search per entity.
    if !ascending {
        around.sort_unstable_by_key(|e| e.0);
    }
    let Interest { visible, refresh } = out;
    visible.clear();
    refresh.clear();
    let mut seen = previous.iter().peekable();
    for &(id, d2) in around.iter() {
        while seen.next_if(|&&p| p < id).is_some() {}
        let inner = d2 <= config.radius * config.radius;
        if id != me && !inner && seen.peek() != Some(&&id) {
            continue;
        }
        visible.push(id);
        let near = d2 <= config.near * config.near;
        if id == me || near || (snapshot_no + u64::from(id)).is_multiple_of(config.far_every) {
            refresh.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entities_in_view_and_hysteresis_at_the_edge() {
        let cfg = InterestConfig::default();
        let grid = Grid::build([
            (1, 500.0, 500.0),
            (2, 600.0, 500.0), // near
            (3, 850.0, 500.0), // 350: far but in view
            (4, 920.0, 500.0), // 420: in the margin
            (5, 990.0, 990.0), // out of view
        ]);
        let first = interest(&grid, 1, 500.0, 500.0, &[], 0, &cfg);
        assert_eq!(first.visible, vec![1, 2, 3], "4 is not yet in view");
        // Once seen, 4 stays while in the margin.
        let kept = interest(&grid, 1, 500.0, 500.0, &[1, 2, 3, 4], 0, &cfg);
        assert_eq!(kept.visible, vec![1, 2, 3, 4]);
        assert!(!kept.visible.contains(&5));
    }

    #[test]
    fn far_entities_refresh_less_often() {
        let cfg = InterestConfig::default();
        let grid = Grid::build([(1, 500.0, 500.0), (2, 550.0, 500.0), (3, 850.0, 500.0)]);
        let mut far_refreshes = 0;
        for n in 0..30 {
            let i = interest(&grid, 1, 500.0, 500.0, &[], n, &cfg);
            assert!(i.refresh.contains(&1) && i.refresh.contains(&2));
            far_refreshes += i.refresh.contains(&3) as u32;
        }
        assert_eq!(far_refreshes, 10);
    }

    proptest::proptest! {
        /// The one-pass interest equals its definition, entity by entity: in view within the
        /// radius (or within the margin when seen last snapshot), `me` always; refreshed when
        /// near, `me`, or in its turn; both lists ascending.
        #[test]
        fn interest_is_its_definition(
            pts in proptest::collection::vec((0f32..ARENA, 0f32..ARENA), 1..80),
            seen_mask in proptest::prelude::any::<u128>(),
            number in 0u64..6,
            narrow in proptest::prelude::any::<bool>(),
        ) {
            // The default view spans most of the arena (every entity scanned in id order); a
            // narrow one walks the grid's cells.
            let cfg = if narrow {
                InterestConfig { radius: 120.0, margin: 30.0, near: 60.0, far_every: 3 }
            } else {
                InterestConfig::default()
            };
            let entities: Vec<(u16, f32, f32)> =
                pts.iter().enumerate().map(|(i, &(x, y))| (i as u16 * 3 + 1, x, y)).collect();
            let grid = Grid::build(entities.clone());
            let (me, x, y) = entities[0];
            let previous: Vec<u16> = entities
                .iter()
                .map(|e| e.0)
                .filter(|id| seen_mask >> (id % 128) & 1 == 1)
                .collect();
            let got = interest(&grid, me, x, y, &previous, number, &cfg);
            let mut want = Interest::default();
            for &(id, ex, ey) in &entities {
                let d2 = (ex - x).powi(2) + (ey - y).powi(2);
                let outer = cfg.radius + cfg.margin;
                let in_view = id == me
                    || d2 <= cfg.radius * cfg.radius
                    || (d2 <= outer * outer && previous.contains(&id));
                if !in_view {
                    continue;
                }
                want.visible.push(id);
                if id == me
                    || d2 <= cfg.near * cfg.near
                    || (number + u64::from(id)).is_multiple_of(cfg.far_every)
                {
                    want.refresh.push(id);
                }
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn grid_matches_brute_force() {
        let pts: Vec<(u16, f32, f32)> = (0..400u16)
            .map(|i| (i, (i as f32 * 37.7) % ARENA, (i as f32 * 91.3) % ARENA))
            .collect();
        let grid = Grid::build(pts.clone());
        for &(x, y, r) in &[
            (0.0, 0.0, 300.0),
            (500.0, 500.0, 450.0),
            (999.0, 10.0, 120.0),
        ] {
            let mut got: Vec<u16> = Vec::new();
            let mut tmp = Vec::new();
            grid.within(x, y, r, &mut tmp);
            got.extend(tmp.iter().map(|t| t.0));
            got.sort();
            let mut want: Vec<u16> = pts
                .iter()
                .filter(|p| (p.1 - x).powi(2) + (p.2 - y).powi(2) <= r * r)
                .map(|p| p.0)
                .collect();
            want.sort();
            assert_eq!(got, want);
        }
    }
}
