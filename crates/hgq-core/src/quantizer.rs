//! Layer-level quantizers (in progress).
