//! Latency estimated from geography, for when nothing was measured.
//!
//! Light in fibre covers about 200 km per millisecond, and real routes are
//! longer than great circles; the estimate uses a route factor of 1.5 plus a
//! fixed 1 ms for the last mile and switching. Measured latencies always take
//! precedence over this model.

use crate::view::Coordinates;

const EARTH_RADIUS_KM: f64 = 6371.0;
const FIBRE_KM_PER_MS: f64 = 200.0;
const ROUTE_FACTOR: f64 = 1.5;
const LAST_MILE_US: f64 = 1000.0;

/// Great-circle distance between two points, in km (haversine).
pub fn distance_km(a: Coordinates, b: Coordinates) -> f64 {
    let (lat1, lat2) = (f64::from(a.latitude).to_radians(), f64::from(b.latitude).to_radians());
    let dlat = lat2 - lat1;
    let dlon = (f64::from(b.longitude) - f64::from(a.longitude)).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Estimated round-trip time between two points, in microseconds.
pub fn estimated_rtt_us(a: Coordinates, b: Coordinates) -> u32 {
    let one_way_ms = distance_km(a, b) * ROUTE_FACTOR / FIBRE_KM_PER_MS;
    let rtt = 2.0 * one_way_ms * 1000.0 + LAST_MILE_US;
    rtt.min(f64::from(u32::MAX - 1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARIS: Coordinates = Coordinates::new(48.86, 2.35);
    const BERLIN: Coordinates = Coordinates::new(52.52, 13.40);

    #[test]
    fn paris_berlin_is_about_880_km() {
        let d = distance_km(PARIS, BERLIN);
        assert!((860.0..900.0).contains(&d), "{d}");
    }

    #[test]
    fn rtt_grows_with_distance_and_has_a_floor() {
        assert_eq!(estimated_rtt_us(PARIS, PARIS), 1000);
        let rtt = estimated_rtt_us(PARIS, BERLIN);
        assert!((13_000..15_000).contains(&rtt), "{rtt}");
    }
}
