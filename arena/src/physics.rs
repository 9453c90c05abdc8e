//! Movement and collision: the part of the simulation a client predicts, so it must give the
//! server's answer bit for bit. No randomness, no other players: a body moves only by its own
//! inputs against the static arena.

use protocol::net::Input;

pub const ARENA: f32 = 1000.0;
pub const MAX_SPEED: f32 = 150.0;
pub const ACCEL: f32 = 600.0;
pub const RADIUS: f32 = 12.0;

/// Obstacles as (x, y, w, h) in arena units.
pub const OBSTACLES: [(f32, f32, f32, f32); 4] = [
    (200.0, 200.0, 120.0, 60.0),
    (680.0, 220.0, 60.0, 160.0),
    (260.0, 650.0, 160.0, 60.0),
    (640.0, 700.0, 120.0, 120.0),
];

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Body {
    pub x: f32,
    pub y: f32,
    pub vx: f32,
    pub vy: f32,
}

/// A body's centre at (x, y) would overlap an obstacle.
pub fn blocked(x: f32, y: f32) -> bool {
    OBSTACLES.iter().any(|&(ox, oy, w, h)| {
        x > ox - RADIUS && x < ox + w + RADIUS && y > oy - RADIUS && y < oy + h + RADIUS
    })
}

/// Steers towards `want` (a velocity as a fraction of the top speed, length at most 1) with
/// bounded acceleration, then moves, sliding along walls and obstacles.
pub fn move_body(b: &mut Body, want: (f32, f32), dt: f32) {
    let (dvx, dvy) = (want.0 * MAX_SPEED - b.vx, want.1 * MAX_SPEED - b.vy);
    let dv = (dvx * dvx + dvy * dvy).sqrt();
    if dv > 1e-4 {
        let step = (ACCEL * dt).min(dv);
        b.vx += dvx / dv * step;
        b.vy += dvy / dv * step;
    }
    let nx = (b.x + b.vx * dt).clamp(RADIUS, ARENA - RADIUS);
    let ny = (b.y + b.vy * dt).clamp(RADIUS, ARENA - RADIUS);
    if !blocked(nx, ny) {
        (b.x, b.y) = (nx, ny);
    } else if !blocked(nx, b.y) {
        b.x = nx;
        b.vy = 0.0;
    } else if !blocked(b.x, ny) {
        b.y = ny;
        b.vx = 0.0;
    } else {
        (b.vx, b.vy) = (0.0, 0.0);
    }
    snap(b);
}

/// Puts a body on the grid the player protocol carries exactly: positions in 64ths of a unit,
/// velocities in 128ths of a unit per second (both exact in an f32 over the arena and the
/// speed range). Server and client both snap after every move, so the own body a snapshot
/// carries in 8 bytes is the server's state bit for bit and prediction replays from it with
/// no error.
pub fn snap(b: &mut Body) {
    b.x = snap_position(b.x);
    b.y = snap_position(b.y);
    b.vx = (b.vx * 128.0).round() / 128.0;
    b.vy = (b.vy * 128.0).round() / 128.0;
}

/// A position on the protocol's grid (64ths of a unit).
pub fn snap_position(v: f32) -> f32 {
    (v * 64.0).round() / 64.0
}

/// The movement an input asks for, clamped to unit length.
pub fn input_direction(input: &Input) -> (f32, f32) {
    let (x, y) = (
        f32::from(input.move_x) / 127.0,
        f32::from(input.move_y) / 127.0,
    );
    let len = (x * x + y * y).sqrt();
    if len > 1.0 {
        (x / len, y / len)
    } else {
        (x, y)
    }
}

/// Moves a player's body by one input (one tick).
pub fn apply_input(b: &mut Body, input: &Input, dt: f32) {
    move_body(b, input_direction(input), dt);
}

pub fn aim_to_radians(aim: u16) -> f32 {
    f32::from(aim) / 65536.0 * std::f32::consts::TAU
}

pub fn radians_to_aim(angle: f32) -> u16 {
    (angle.rem_euclid(std::f32::consts::TAU) / std::f32::consts::TAU * 65536.0).round() as u32
        as u16
}

/// Distance along the ray (x, y) + t*(dx, dy) (unit direction) to the first obstacle, if any
/// within `max`.
pub fn ray_to_obstacle(x: f32, y: f32, dx: f32, dy: f32, max: f32) -> Option<f32> {
    let mut best: Option<f32> = None;
    for &(ox, oy, w, h) in &OBSTACLES {
        // Slab test.
        let (mut t0, mut t1) = (0.0f32, max);
        for (p, d, lo, hi) in [(x, dx, ox, ox + w), (y, dy, oy, oy + h)] {
            if d.abs() < 1e-9 {
                if p < lo || p > hi {
                    t0 = f32::INFINITY;
                }
                continue;
            }
            let (a, b) = ((lo - p) / d, (hi - p) / d);
            t0 = t0.max(a.min(b));
            t1 = t1.min(a.max(b));
        }
        if t0 <= t1 && t0.is_finite() {
            best = Some(best.map_or(t0, |b: f32| b.min(t0)));
        }
    }
    best
}

/// Distance along the ray to where it enters the circle of `RADIUS` around (cx, cy).
pub fn ray_to_circle(x: f32, y: f32, dx: f32, dy: f32, cx: f32, cy: f32) -> Option<f32> {
    let (fx, fy) = (cx - x, cy - y);
    let along = fx * dx + fy * dy;
    if along < 0.0 {
        return None;
    }
    let perp2 = fx * fx + fy * fy - along * along;
    let r2 = RADIUS * RADIUS;
    if perp2 > r2 {
        return None;
    }
    Some(along - (r2 - perp2).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aim_round_trips_to_a_65536th_of_a_turn() {
        for a in [0.0f32, 1.0, 3.0, -1.0, 6.0] {
            let back = aim_to_radians(radians_to_aim(a));
            let diff = (back - a.rem_euclid(std::f32::consts::TAU)).abs();
            assert!(diff < 1e-3, "{a} -> {back}");
        }
    }

    #[test]
    fn rays_stop_at_obstacles_and_find_circles() {
        // From the left of the first obstacle, straight right into it.
        assert_eq!(ray_to_obstacle(100.0, 230.0, 1.0, 0.0, 500.0), Some(100.0));
        assert_eq!(ray_to_obstacle(100.0, 100.0, 1.0, 0.0, 500.0), None);
        let d = ray_to_circle(0.0, 0.0, 1.0, 0.0, 50.0, 0.0).unwrap();
        assert!((d - (50.0 - RADIUS)).abs() < 1e-4);
        assert_eq!(ray_to_circle(0.0, 0.0, 1.0, 0.0, 50.0, 20.0), None);
        assert_eq!(ray_to_circle(0.0, 0.0, -1.0, 0.0, 50.0, 0.0), None);
    }

    #[test]
    fn bodies_accelerate_to_top_speed_and_stop() {
        let mut b = Body {
            x: 500.0,
            y: 500.0,
            ..Body::default()
        };
        for _ in 0..30 {
            move_body(&mut b, (1.0, 0.0), 1.0 / 30.0);
        }
        assert!((b.vx - MAX_SPEED).abs() < 1e-3);
        for _ in 0..30 {
            move_body(&mut b, (0.0, 0.0), 1.0 / 30.0);
        }
        assert_eq!((b.vx, b.vy), (0.0, 0.0));
    }
}
