//! The embedded backends: everything in the data dir, nothing else to
//! install. [`EmbeddedQueues`] keeps queues and async job records in one
//! SQLite database behind a group-committing writer; [`EmbeddedBlobs`]
//! keeps buckets as folders of files with an SQLite index and change feed.

pub mod blobs;
pub mod queues;
pub mod state;

pub use blobs::EmbeddedBlobs;
pub use queues::EmbeddedQueues;
pub use state::EmbeddedState;
