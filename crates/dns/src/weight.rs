//! The re-weighting rule: an MX host's preference from the measured health and load of the mail
//! servers behind it. A pure function, so the rule is read and tested in one place.
//!
//! ```text
//! no server behind the host answered /status      -> 90 (DEAD)
//! load = sessions / (healthy servers x 1000)       (inet-mx serves at most 1000 sessions at once)
//! load < 0.9 (room left)                           -> base + floor(load x 10)   (+0 .. +8)
//! load >= 0.9 (saturated)                          -> base + 15                 (SATURATED_PENALTY)
//! ```
//!
//! With base 10 for the primary and 20 for a secondary, a loaded primary (10..18) stays ahead of a
//! healthy secondary (20..28): mail keeps going home while the home site has room. A saturated
//! primary (25) falls behind a secondary that still has room (20..28 minus the saturated case), and a
//! dead one (90) behind any secondary that lives. Lost servers count through `healthy`: the sessions
//! concentrate on fewer servers, so the load (and the penalty) rises.

/// What one poll of a group of mail servers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupHealth {
    /// Servers in the group (in the topology).
    pub servers: usize,
    /// Servers that answered `/status` in time and said they are ready.
    pub healthy: usize,
    /// Open sessions summed over the healthy servers.
    pub sessions: u64,
}

/// Preference of the primary MX host (the home site's Internet entry).
pub const PRIMARY_BASE: u16 = 10;
/// Preference of a secondary MX host (another site).
pub const SECONDARY_BASE: u16 = 20;
/// Preference of a host none of whose servers answers: below every live host.
pub const DEAD: u16 = 90;
/// Sessions one server serves at once (inet-mx's cap).
pub const SESSIONS_PER_SERVER: u64 = 1000;
/// Load from which a group counts as saturated.
pub const SATURATED_LOAD: f64 = 0.9;
/// Penalty of a saturated group: enough to fall behind a secondary with room.
pub const SATURATED_PENALTY: u16 = 15;

/// The load of a group: open sessions over what its healthy servers can hold (0 when none is healthy).
pub fn load(health: &GroupHealth) -> f64 {
    if health.healthy == 0 {
        return 0.0;
    }
    let capacity = health.healthy as f64 * SESSIONS_PER_SERVER as f64;
    health.sessions as f64 / capacity
}

/// The preference an MX host with `base` gets from its group's health; `None` (not measured yet,
/// just after start) keeps the base.
pub fn preference(base: u16, health: Option<&GroupHealth>) -> u16 {
    let Some(health) = health else {
        return base;
    };
    if health.healthy == 0 {
        return DEAD;
    }
    let load = load(health);
    if load >= SATURATED_LOAD {
        return base.saturating_add(SATURATED_PENALTY);
    }
    // load in [0, 0.9): floor(load * 10) is 0..=8.
    let penalty = (load * 10.0).floor().clamp(0.0, 8.0) as u16;
    base.saturating_add(penalty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(healthy: usize, sessions: u64) -> GroupHealth {
        GroupHealth {
            servers: 2,
            healthy,
            sessions,
        }
    }

    #[test]
    fn unmeasured_keeps_the_base() {
        assert_eq!(preference(PRIMARY_BASE, None), 10);
        assert_eq!(preference(SECONDARY_BASE, None), 20);
    }

    #[test]
    fn idle_groups_keep_their_base() {
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 0))), 10);
        assert_eq!(preference(SECONDARY_BASE, Some(&group(2, 0))), 20);
    }

    #[test]
    fn a_dead_group_is_90_whatever_its_base() {
        assert_eq!(preference(PRIMARY_BASE, Some(&group(0, 0))), DEAD);
        assert_eq!(preference(SECONDARY_BASE, Some(&group(0, 500))), DEAD);
    }

    #[test]
    fn load_adds_up_to_8() {
        // 2 healthy servers hold 2000 sessions.
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 199))), 10);
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 200))), 11);
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 1000))), 15);
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 1799))), 18);
    }

    #[test]
    fn a_loaded_primary_stays_ahead_of_a_healthy_secondary() {
        let secondary = preference(SECONDARY_BASE, Some(&group(2, 0)));
        for sessions in (0..1800).step_by(50) {
            let primary = preference(PRIMARY_BASE, Some(&group(2, sessions)));
            assert!(primary < secondary, "{sessions} sessions: {primary}");
        }
    }

    #[test]
    fn a_saturated_primary_falls_behind_a_secondary_with_room() {
        let primary = preference(PRIMARY_BASE, Some(&group(2, 1800)));
        assert_eq!(primary, 25);
        assert!(primary > preference(SECONDARY_BASE, Some(&group(2, 900))));
        // ...but not behind a saturated secondary.
        assert!(primary < preference(SECONDARY_BASE, Some(&group(2, 2000))));
    }

    #[test]
    fn a_lost_server_concentrates_the_load() {
        // 900 sessions on two servers is light; on the one left it is heavy.
        assert_eq!(preference(PRIMARY_BASE, Some(&group(2, 900))), 14);
        assert_eq!(preference(PRIMARY_BASE, Some(&group(1, 900))), 25);
    }

    #[test]
    fn a_dead_site_is_behind_every_live_one() {
        let dead = preference(PRIMARY_BASE, Some(&group(0, 0)));
        let worst_live = preference(SECONDARY_BASE, Some(&group(1, 5000)));
        assert!(dead > worst_live);
        assert_eq!(load(&group(0, 10)), 0.0);
    }
}
