//! janitor
