//! Kinematics of one planner block: a trapezoidal speed profile along the move's vector.
//!
//! Positions are computed in closed form from the profile's start instant, so the simulator
//! needs no timer per step or per millisecond: a report at any instant evaluates `s(t)`.
//! Units: millimetres, seconds, mm/s, mm/s².
use firmware_core::time::{Duration, Instant};

/// A speed profile over a straight segment: accelerate from `v0` to `vp`, cruise, decelerate to
/// rest at distance `d_total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Entry speed, mm/s.
    pub v0: f64,
    /// Peak speed, mm/s.
    pub vp: f64,
    /// Acceleration (and deceleration), mm/s².
    pub a: f64,
    /// Time accelerating, s.
    pub t_acc: f64,
    /// Time cruising, s.
    pub t_cruise: f64,
    /// Time decelerating, s.
    pub t_dec: f64,
    /// Distance covered by the whole profile, mm.
    pub d_total: f64,
}

impl Profile {
    /// From rest to rest over `d` mm, cruising at no more than `vmax` with acceleration `a`.
    pub fn rest_to_rest(d: f64, vmax: f64, a: f64) -> Profile {
        let d = d.max(0.0);
        if d == 0.0 || vmax <= 0.0 || a <= 0.0 {
            return Profile::still();
        }
        // A triangle reaches sqrt(a·d) at half way; cap it at vmax.
        let vp = vmax.min((a * d).sqrt());
        let t_ramp = vp / a;
        let d_ramp = vp * vp / (2.0 * a);
        let d_cruise = (d - 2.0 * d_ramp).max(0.0);
        Profile {
            v0: 0.0,
            vp,
            a,
            t_acc: t_ramp,
            t_cruise: d_cruise / vp,
            t_dec: t_ramp,
            d_total: d,
        }
    }

    /// From speed `v` to rest as fast as `a` allows (a feed hold).
    pub fn stop_from(v: f64, a: f64) -> Profile {
        if v <= 0.0 || a <= 0.0 {
            return Profile::still();
        }
        Profile {
            v0: v,
            vp: v,
            a,
            t_acc: 0.0,
            t_cruise: 0.0,
            t_dec: v / a,
            d_total: v * v / (2.0 * a),
        }
    }

    /// Standing still (no distance, no time).
    pub fn still() -> Profile {
        Profile {
            v0: 0.0,
            vp: 0.0,
            a: 0.0,
            t_acc: 0.0,
            t_cruise: 0.0,
            t_dec: 0.0,
            d_total: 0.0,
        }
    }

    /// Total duration, s.
    pub fn duration_s(&self) -> f64 {
        self.t_acc + self.t_cruise + self.t_dec
    }

    /// Total duration on the virtual clock, rounded up so the end is never early.
    pub fn duration(&self) -> Duration {
        Duration::from_micros((self.duration_s() * 1e6).ceil().max(0.0) as u64)
    }

    fn d_acc(&self) -> f64 {
        (self.v0 + self.vp) * 0.5 * self.t_acc
    }

    /// Distance covered `t` seconds after the start.
    pub fn distance_at(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        if t < self.t_acc {
            return self.v0 * t + 0.5 * self.a * t * t;
        }
        let d_acc = self.d_acc();
        let t1 = t - self.t_acc;
        if t1 < self.t_cruise {
            return d_acc + self.vp * t1;
        }
        let t2 = t1 - self.t_cruise;
        if t2 < self.t_dec {
            let d = d_acc + self.vp * self.t_cruise + self.vp * t2 - 0.5 * self.a * t2 * t2;
            return d.min(self.d_total);
        }
        self.d_total
    }

    /// Speed `t` seconds after the start, mm/s.
    pub fn speed_at(&self, t: f64) -> f64 {
        if t < 0.0 {
            return self.v0;
        }
        if t < self.t_acc {
            return self.v0 + self.a * t;
        }
        let t1 = t - self.t_acc;
        if t1 < self.t_cruise {
            return self.vp;
        }
        let t2 = t1 - self.t_cruise;
        if t2 < self.t_dec {
            return (self.vp - self.a * t2).max(0.0);
        }
        0.0
    }
}

/// Seconds from `start` to `now` (zero if `now` is earlier).
pub fn secs_since(now: Instant, start: Instant) -> f64 {
    (now - start).as_micros() as f64 / 1e6
}

/// The vector speed limit of a move along unit vector `u`: the largest `v` with
/// `v·|u_i| ≤ limit_i` on every axis (Grbl's `limit_value_by_axis_maximum`).
pub fn limit_by_axes(u: &[f64], limits: &[f64]) -> f64 {
    u.iter()
        .zip(limits)
        .filter(|(ui, _)| ui.abs() > 1e-12)
        .map(|(ui, l)| l / ui.abs())
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_move_accelerates_cruises_and_decelerates() {
        // 10 mm at 200 mm/min (3.333 mm/s), 100 mm/s²: ramps of 33.3 ms and 0.0556 mm.
        let v = 200.0 / 60.0;
        let p = Profile::rest_to_rest(10.0, v, 100.0);
        assert!((p.t_acc - v / 100.0).abs() < 1e-12);
        let expected = 10.0 / v + v / 100.0;
        assert!(
            (p.duration_s() - expected).abs() < 1e-9,
            "{}",
            p.duration_s()
        );
        assert!((p.distance_at(p.duration_s()) - 10.0).abs() < 1e-9);
        assert!((p.distance_at(p.t_acc) - v * v / 200.0).abs() < 1e-9);
        assert_eq!(p.speed_at(1.0), v);
    }

    #[test]
    fn a_short_move_is_a_triangle() {
        let p = Profile::rest_to_rest(0.01, 10.0, 100.0);
        assert_eq!(p.t_cruise, 0.0);
        assert!((p.vp - 1.0).abs() < 1e-12);
        assert!((p.distance_at(p.duration_s()) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn a_stop_covers_v_squared_over_two_a() {
        let v = 200.0 / 60.0;
        let p = Profile::stop_from(v, 100.0);
        assert!((p.d_total - v * v / 200.0).abs() < 1e-12);
        assert!((p.distance_at(p.t_dec) - p.d_total).abs() < 1e-12);
    }

    #[test]
    fn the_vector_limit_keeps_every_axis_within_its_own() {
        let s = 2f64.sqrt() / 2.0;
        let v = limit_by_axes(&[s, s, 0.0, 0.0], &[200.0, 100.0, 1.0, 1.0]);
        assert!((v * s - 100.0).abs() < 1e-9);
    }
}
