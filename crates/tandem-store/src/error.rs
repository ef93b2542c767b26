//! The one error type of the store layer.

use std::time::Duration;

/// Why a store call failed.
///
/// Call-level failures (`Unavailable`, `TimedOut`, `Backend`) fail a whole
/// batch call; per-key outcomes (`NotFound`, `Corrupt`) are reported key by
/// key inside a successful call, so one bad value never hides the others.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No value is stored under the key (or it expired).
    #[error("no value stored under {key:?}")]
    NotFound {
        /// The full store key.
        key: String,
    },
    /// The store cannot be reached (connection refused or dropped, cluster
    /// down, file unreadable).
    #[error("{backend} store unavailable: {detail}")]
    Unavailable {
        /// Which backend (`redis`, `redis-cluster`, `embedded`).
        backend: &'static str,
        /// What the client reported.
        detail: String,
    },
    /// The call did not complete within the configured timeout.
    #[error("{backend} store call timed out after {after:?}")]
    TimedOut {
        /// Which backend.
        backend: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// A stored value does not decode (not the expected JSON, wrong type).
    #[error("value under {key:?} is corrupt: {detail}")]
    Corrupt {
        /// The full store key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store URL or an option in it is not valid.
    #[error("invalid store URL {url:?}: {detail}")]
    InvalidUrl {
        /// The URL as given (credentials redacted).
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The backend answered with an error that is none of the above.
    #[error("{backend} store error: {detail}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What the backend reported.
        detail: String,
    },
}

impl StoreError {
    /// Whether this is a per-key "nothing stored" outcome.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Whether retrying later may succeed (the store is down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::TimedOut { .. }
        )
    }

    pub(crate) fn corrupt(key: &str, detail: impl ToString) -> Self {
        StoreError::Corrupt {
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }
}

/// The outcome for one key of a batch read: the value, or `NotFound` /
/// `Corrupt`.
pub type Lookup<T> = Result<T, StoreError>;
