//! Node configuration (in progress).
