//! What a server says of its replication: how far a replica lags behind its primary, or a
//! primary's replicas behind it, for a caller that holds back its writes while they lag.

use std::time::Duration;

/// How far behind a server's replication is, or why it cannot say.
#[derive(Debug, Clone, PartialEq)]
pub enum Replication {
    /// Behind by this long; zero when everything received has been applied.
    Lag(Duration),
    /// The lag cannot be known, for the reason given, worded to follow the server's name
    /// (`is not a replica (it is not in recovery)`): not a replica, replication stopped, no
    /// replica connected.
    Unknown(String),
}

impl Replication {
    /// A lag of `seconds`, as a database computed it: a negative figure (the replica's clock
    /// behind its primary's) counts as none; one that is not a number is unknown.
    pub fn from_seconds(seconds: f64) -> Replication {
        if !seconds.is_finite() {
            return Replication::Unknown(format!("gives a lag of {seconds} seconds"));
        }
        Replication::Lag(Duration::from_secs_f64(seconds.clamp(0.0, 1e12)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_in_seconds_is_never_negative() {
        assert_eq!(
            Replication::from_seconds(2.5),
            Replication::Lag(Duration::from_millis(2500))
        );
        assert_eq!(
            Replication::from_seconds(-0.3),
            Replication::Lag(Duration::ZERO)
        );
        assert!(matches!(
            Replication::from_seconds(f64::NAN),
            Replication::Unknown(_)
        ));
    }
}
