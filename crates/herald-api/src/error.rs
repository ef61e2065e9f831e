//! The gRPC API's errors, converted to `tonic::Status` in one place.

use herald_node::{EventField, PublishError};
use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::NotFound(_) => Code::NotFound,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The per-message error of a batch or stream result.
    pub fn to_proto(&self) -> herald_proto::v1::Error {
        herald_proto::v1::Error { code: self.code() as i32, message: self.to_string() }
    }
}

impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Invalid(refusal) => Self::InvalidArgument(refusal.render(field_name)),
            PublishError::TooLarge(refusal) => Self::ResourceExhausted(refusal.render(field_name)),
            PublishError::Backbone(e) => e.into(),
            PublishError::EventLog(e) => Self::Unavailable(e.to_string()),
        }
    }
}

/// An event's field as `herald.v1.Event` names it.
fn field_name(field: EventField) -> &'static str {
    match field {
        EventField::ExcludeSocketId => "exclude_socket_id",
        other => other.pusher_name(),
    }
}

impl From<herald_backbone::Error> for Error {
    fn from(e: herald_backbone::Error) -> Self {
        if e.is_retryable() { Self::Unavailable(e.to_string()) } else { Self::Internal(e.to_string()) }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
