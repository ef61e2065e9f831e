//! Generated prost/tonic code for Herald's gRPC API (`proto/herald/v1`), checked in so
//! builds need no protoc; `tests/bootstrap.rs` regenerates it and fails on drift.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    include!("gen/herald.v1.rs");

    /// The encoded `FileDescriptorSet` of `herald.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/herald_v1_descriptor.bin");
}
