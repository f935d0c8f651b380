//! The transfer fee: depends on the time of day and on the phase of the moon.
//!
//! What it does: a pure function from (amount, instant) to a [`FeeQuote`]. The
//! store calls it with the real clock, which is what makes the application
//! honestly non-deterministic: the same command, replayed a minute or a week
//! later, can charge a different fee, so a replica cannot re-execute commands
//! and must receive their effects.
//!
//! The rule (also in `accounts/README.md`):
//!
//! - Base rate by the UTC hour of the transaction's timestamp: 09:00-16:59 UTC
//!   (business hours) 30 basis points; 17:00-22:59 UTC 15 bp; 23:00-08:59 UTC 5 bp.
//! - Moon multiplier: new moon 0 (transfers are free), full moon 2 (the
//!   lunatic surcharge), any other phase 1.
//! - fee = ceil(cents * rate_bp * multiplier / 10 000), paid by the sender on
//!   top of the amount, credited to the `house` account.
//! - No fee when the house itself is the sender or the receiver.
//!
//! The phase of the moon uses the standard mean-synodic-month approximation:
//! age = (t - 2000-01-06 18:14 UTC) mod 29.530588853 days, cut into eight equal
//! phases centred on new moon (age 0), first quarter, full moon (age 14.77),
//! last quarter. It is off from the true phase by up to about a day, which is
//! fine for a fee (and it is what the README promises).
//!
//! Invariants: 0 <= fee <= cents (the highest rate is 60 bp; rounding up makes
//! the fee on 1 cent equal 1 cent at most), so computing it never overflows.

use serde::{Deserialize, Serialize};

/// Mean length of a lunar month (new moon to new moon), in days.
pub const SYNODIC_MONTH_DAYS: f64 = 29.530_588_853;
/// A known new moon: 2000-01-06 18:14 UTC, in Unix seconds.
pub const REFERENCE_NEW_MOON_UNIX_S: i64 = 947_182_440;

const SECONDS_PER_DAY: i64 = 86_400;
const MICROS_PER_SECOND: i64 = 1_000_000;
const BASIS_POINTS_PER_UNIT: u128 = 10_000;

/// The eight traditional phases of the moon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoonPhase {
    New,
    WaxingCrescent,
    FirstQuarter,
    WaxingGibbous,
    Full,
    WaningGibbous,
    LastQuarter,
    WaningCrescent,
}

impl MoonPhase {
    /// The fee multiplier this phase applies.
    pub fn multiplier(self) -> u32 {
        match self {
            MoonPhase::New => 0,
            MoonPhase::Full => 2,
            _ => 1,
        }
    }
}

/// The fee charged on one transfer, with the inputs that decided it (so a
/// client can see why it paid what it paid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeQuote {
    /// What the sender pays on top of the amount.
    pub cents: i64,
    /// The time-of-day rate, in basis points (1/100 of a percent).
    pub rate_bps: u32,
    /// The moon's multiplier (0, 1 or 2).
    pub multiplier: u32,
    /// The UTC hour (0..=23) of the transaction's timestamp.
    pub utc_hour: u8,
    pub moon: MoonPhase,
}

/// The moon's age at `unix_us`: days since the last new moon, in [0, 29.53).
pub fn moon_age_days(unix_us: i64) -> f64 {
    let seconds = unix_us.div_euclid(MICROS_PER_SECOND) - REFERENCE_NEW_MOON_UNIX_S;
    let days = seconds as f64 / SECONDS_PER_DAY as f64;
    let age = days.rem_euclid(SYNODIC_MONTH_DAYS);
    // rem_euclid can round up to exactly the modulus for tiny negative inputs.
    if age >= SYNODIC_MONTH_DAYS {
        0.0
    } else {
        age
    }
}

/// The phase of the moon at `unix_us`.
pub fn moon_phase(unix_us: i64) -> MoonPhase {
    const PHASES: [MoonPhase; 8] = [
        MoonPhase::New,
        MoonPhase::WaxingCrescent,
        MoonPhase::FirstQuarter,
        MoonPhase::WaxingGibbous,
        MoonPhase::Full,
        MoonPhase::WaningGibbous,
        MoonPhase::LastQuarter,
        MoonPhase::WaningCrescent,
    ];
    let eighth = SYNODIC_MONTH_DAYS / 8.0;
    // Shift by half a phase so that each phase is centred on its instant.
    let index = ((moon_age_days(unix_us) + eighth / 2.0) / eighth).floor() as usize % 8;
    PHASES[index]
}

/// The UTC hour of the day (0..=23) at `unix_us`.
pub fn utc_hour(unix_us: i64) -> u8 {
    let second_of_day = unix_us
        .div_euclid(MICROS_PER_SECOND)
        .rem_euclid(SECONDS_PER_DAY);
    let hour = second_of_day / 3600;
    assert!((0..24).contains(&hour));
    hour as u8
}

/// The time-of-day rate, in basis points, for a UTC hour.
pub fn rate_bps_for_hour(hour: u8) -> u32 {
    assert!(hour < 24);
    match hour {
        9..=16 => 30,
        17..=22 => 15,
        _ => 5,
    }
}

/// The fee on a transfer of `cents` made at `unix_us`.
pub fn quote(cents: i64, unix_us: i64) -> FeeQuote {
    assert!(cents >= 0, "amounts are validated before they are quoted");
    let hour = utc_hour(unix_us);
    let rate_bps = rate_bps_for_hour(hour);
    let moon = moon_phase(unix_us);
    let multiplier = moon.multiplier();
    // u128: cents * 30 * 2 cannot overflow, and ceil division stays exact.
    let numerator = cents as u128 * u128::from(rate_bps) * u128::from(multiplier);
    let fee = numerator.div_ceil(BASIS_POINTS_PER_UNIT);
    assert!(fee <= cents as u128, "the fee never exceeds the amount");
    FeeQuote {
        cents: fee as i64,
        rate_bps,
        multiplier,
        utc_hour: hour,
        moon,
    }
}

/// A quote for a transfer that carries no fee (the house is one of its sides).
pub fn waived(unix_us: i64) -> FeeQuote {
    FeeQuote {
        cents: 0,
        rate_bps: 0,
        multiplier: 0,
        utc_hour: utc_hour(unix_us),
        moon: moon_phase(unix_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: i64 = MICROS_PER_SECOND;

    #[test]
    fn known_moons() {
        // Full moon 2024-04-23 23:49 UTC; new moon 2024-04-08 18:21 UTC (the
        // total solar eclipse); first quarter 2024-04-15 19:13 UTC.
        assert_eq!(moon_phase(1_713_916_140 * US), MoonPhase::Full);
        assert_eq!(moon_phase(1_712_600_460 * US), MoonPhase::New);
        assert_eq!(moon_phase(1_713_208_380 * US), MoonPhase::FirstQuarter);
        assert_eq!(moon_phase(REFERENCE_NEW_MOON_UNIX_S * US), MoonPhase::New);
        // Half a month after the reference is a full moon.
        let half = (SYNODIC_MONTH_DAYS / 2.0 * SECONDS_PER_DAY as f64) as i64;
        assert_eq!(
            moon_phase((REFERENCE_NEW_MOON_UNIX_S + half) * US),
            MoonPhase::Full
        );
    }

    #[test]
    fn hours_and_rates() {
        assert_eq!(utc_hour(0), 0);
        assert_eq!(utc_hour((9 * 3600) * US), 9);
        assert_eq!(utc_hour(-US), 23);
        assert_eq!(rate_bps_for_hour(8), 5);
        assert_eq!(rate_bps_for_hour(9), 30);
        assert_eq!(rate_bps_for_hour(16), 30);
        assert_eq!(rate_bps_for_hour(17), 15);
        assert_eq!(rate_bps_for_hour(22), 15);
        assert_eq!(rate_bps_for_hour(23), 5);
    }

    #[test]
    fn fee_arithmetic() {
        // 2024-04-23 12:00 UTC: business hours, full moon: 60 bp.
        let full_noon = 1_713_873_600 * US;
        assert_eq!(moon_phase(full_noon), MoonPhase::Full);
        let q = quote(10_000, full_noon);
        assert_eq!(
            (q.rate_bps, q.multiplier, q.cents, q.utc_hour),
            (30, 2, 60, 12)
        );
        assert_eq!(quote(1, full_noon).cents, 1, "fees round up");
        assert_eq!(quote(0, full_noon).cents, 0);
        // 2024-04-08 12:00 UTC: new moon: free.
        assert_eq!(quote(10_000, 1_712_577_600 * US).cents, 0);
        let max = quote(crate::command::MAX_AMOUNT_CENTS, full_noon);
        assert!(max.cents < crate::command::MAX_AMOUNT_CENTS);
    }

    proptest::proptest! {
        #[test]
        fn fee_is_bounded(cents in 1i64..=crate::command::MAX_AMOUNT_CENTS, at in proptest::num::i64::ANY) {
            let q = quote(cents, at);
            proptest::prop_assert!(q.cents >= 0 && q.cents <= cents);
            proptest::prop_assert!(cents < 200 || q.cents < cents);
            proptest::prop_assert!(moon_age_days(at) >= 0.0 && moon_age_days(at) < SYNODIC_MONTH_DAYS);
        }
    }
}
