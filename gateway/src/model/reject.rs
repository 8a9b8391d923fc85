//! Why an input was not accepted: the reasons every source counts rejects by (per subscription in
//! `/metrics`, in `/api/v1/rejects`).

/// Why a message, or one value in it, was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    MalformedJson,
    MalformedNumber,
    MissingField,
    WrongType,
    NonFinite,
    UnknownDevice,
    UnknownPoint,
    GridMismatch,
    BadTimestamp,
    TimestampFuture,
    TimestampPast,
    NoValues,
    TopicMismatch,
}

impl RejectReason {
    /// Every reason, in the order of [`RejectReason::index`].
    pub const ALL: [RejectReason; 14] = [
        Self::TooLarge,
        Self::MalformedJson,
        Self::MalformedNumber,
        Self::MissingField,
        Self::WrongType,
        Self::NonFinite,
        Self::UnknownDevice,
        Self::UnknownPoint,
        Self::GridMismatch,
        Self::BadTimestamp,
        Self::TimestampFuture,
        Self::TimestampPast,
        Self::NoValues,
        Self::TopicMismatch,
    ];

    /// Position in [`RejectReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::MalformedJson => "malformed_json",
            Self::MalformedNumber => "malformed_number",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::NonFinite => "non_finite",
            Self::UnknownDevice => "unknown_device",
            Self::UnknownPoint => "unknown_point",
            Self::GridMismatch => "grid_mismatch",
            Self::BadTimestamp => "bad_timestamp",
            Self::TimestampFuture => "timestamp_future",
            Self::TimestampPast => "timestamp_past",
            Self::NoValues => "no_values",
            Self::TopicMismatch => "topic_mismatch",
        }
    }
}
